"""The rotary embedding of one new token's queries and keys, with its keys and values written into
the KV cache, in one launch (inference on CUDA).

PyTorch spells `apply_rotary` on the queries and keys and the two cache writes of a decode step
as 14 small kernels per attention layer (slices, negation, concatenations, products, sums,
index copies). This kernel evaluates the same expressions in the same dtype, rounding where
PyTorch's kernels round (each product, then their sum), so it agrees with them bit for bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import INTERPRET
from .ssd_common import dependent_launch
from .utils import next_power_of_2, wait_for_inputs


@triton.jit
def _rotary_step_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, q_out_ptr, kc_ptr, vc_ptr, slot_ptr, H,
                        sq_b, sq_h, sk_b, sk_h, sv_b, sv_h, sc_b, ss_b, so_b, so_h, skc_b, skc_h, skc_s, svc_b, svc_h, svc_s,
                        D: tl.constexpr, ROT: tl.constexpr, BD: tl.constexpr, PDL: tl.constexpr):
    # program (b, h): query head h < H, else KV head h - H (its key rotated, its value copied)
    wait_for_inputs(PDL)
    b, h = tl.program_id(0), tl.program_id(1)
    ds = tl.arange(0, BD)
    ok = ds < D
    rot = ds < ROT
    half: tl.constexpr = ROT // 2
    slot = tl.load(slot_ptr)
    if h < H:
        src = q_ptr + b * sq_b + h * sq_h
        dst = q_out_ptr + b * so_b + h * so_h
    else:
        src = k_ptr + b * sk_b + (h - H) * sk_h
        dst = kc_ptr + b * skc_b + (h - H) * skc_h + slot * skc_s
    x = tl.load(src + ds, mask=ok, other=0.0)
    partner = tl.load(src + tl.where(ds < half, ds + half, ds - half), mask=rot, other=0.0).to(tl.float32)
    rotated = tl.where(ds < half, -partner, partner)  # rotate-half: (-x2, x1), exact in fp32
    c = tl.load(cos_ptr + b * sc_b + ds, mask=rot, other=0.0)
    s = tl.load(sin_ptr + b * ss_b + ds, mask=rot, other=0.0)
    dt = x.dtype
    y = ((x.to(tl.float32) * c.to(tl.float32)).to(dt).to(tl.float32)
         + (rotated * s.to(tl.float32)).to(dt).to(tl.float32)).to(dt)
    tl.store(dst + ds, tl.where(rot, y, x), mask=ok)
    if h >= H:
        v = tl.load(v_ptr + b * sv_b + (h - H) * sv_h + ds, mask=ok, other=0.0)
        tl.store(vc_ptr + b * svc_b + (h - H) * svc_h + slot * svc_s + ds, v, mask=ok)


def rotary_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                key_cache: torch.Tensor, value_cache: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """q (b, H, 1, d), k and v (b, Hkv, 1, d) of one position; cos, sin (b, 1, r) with r ≤ d the
    rotated channels. Writes rotate(k) and v into the caches (b, Hkv, S, d) at the position held
    by the one-element device tensor `slot`, and returns rotate(q) (b, H, 1, d). All in one dtype."""
    b, h, l, d = q.shape
    hkv = k.shape[1]
    r = cos.shape[-1]
    if l != 1 or k.shape != (b, hkv, 1, d) or v.shape != k.shape:
        raise ValueError(f"q, k, v: expected one position each, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if cos.shape != (b, 1, r) or sin.shape != cos.shape or r % 2 or r > d:
        raise ValueError(f"cos, sin: expected ({b}, 1, r) with r even and at most {d}, got {tuple(cos.shape)}")
    if len({t.dtype for t in (q, k, v, cos, sin, key_cache, value_cache)}) != 1:
        raise ValueError("q, k, v, cos, sin and the caches must share one dtype")
    q, k, v, cos, sin = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, cos, sin))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _rotary_step_kernel[(b, h + hkv)](
        q, k, v, cos, sin, out, key_cache, value_cache, slot, h, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), cos.stride(0), sin.stride(0), out.stride(0), out.stride(1), *key_cache.stride()[:3],
        *value_cache.stride()[:3], D=d, ROT=r, BD=max(16, next_power_of_2(d)), **dependent_launch(q),
        **({} if INTERPRET else {"enable_fp_fusion": False}))  # no FMA: PyTorch rounds each product
    return out
