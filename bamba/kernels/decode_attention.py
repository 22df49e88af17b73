"""Attention of one new token over a KV cache, split over the keys (flash-decoding).

At one token a KV head's queries are few (its query heads), so a kernel with one program per head
leaves most SMs idle while a few stream the whole cache: on the H200, SDPA took 100 µs for
Bamba-9B's 8 KV heads at a 4k cache, whose keys and values are 17 MB (4 µs of copy bandwidth).
Here each program takes one KV head and one slice of the keys (an online softmax over its slice),
and a second launch combines the slices' partial results (17 µs there). Softmax and products in fp32, the
probabilities rounded to the values' dtype before their product, as SDPA's fused kernels do.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .ssd_common import dependent_launch, launch_opts
from .utils import cdiv, mm, next_power_of_2, wait_for_inputs


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, part_ptr, S, HKV, R, keys_per_split, scale,
                  sq_b, sq_h, sq_r, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, sm_b, sm_s,
                  D: tl.constexpr, DP: tl.constexpr, RP: tl.constexpr, BN: tl.constexpr, HAS_MASK: tl.constexpr,
                  PDL: tl.constexpr):
    wait_for_inputs(PDL)
    bh, split = tl.program_id(0), tl.program_id(1)
    b, h = bh // HKV, bh % HKV
    rows, ds = tl.arange(0, RP), tl.arange(0, DP)  # DP: the head size padded to a power of two
    d_ok = ds < D
    q = tl.load(q_ptr + b * sq_b + h * sq_h + rows[:, None] * sq_r + ds[None, :],
                mask=(rows < R)[:, None] & d_ok[None, :], other=0.0)
    m = tl.full((RP,), float("-inf"), tl.float32)
    total = tl.zeros((RP,), tl.float32)
    acc = tl.zeros((RP, DP), tl.float32)
    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, S)
    for n0 in range(start, end, BN):
        ns = n0 + tl.arange(0, BN)
        ok = ns < end
        k = tl.load(k_ptr + b * sk_b + h * sk_h + ns[:, None] * sk_s + ds[None, :], mask=ok[:, None] & d_ok[None, :],
                    other=0.0)
        s = mm(q, tl.trans(k)) * scale
        if HAS_MASK:
            ok = ok & (tl.load(mask_ptr + b * sm_b + ns * sm_s, mask=ok, other=0) != 0)
        s = tl.where(ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: keep exp() away from -inf - -inf
        p = tl.exp(s - shift[:, None])
        alpha = tl.exp(m - shift)
        v = tl.load(v_ptr + b * sv_b + h * sv_h + ns[:, None] * sv_s + ds[None, :], mask=ok[:, None] & d_ok[None, :],
                    other=0.0)
        acc = acc * alpha[:, None] + mm(p.to(v.dtype), v)
        total = total * alpha + tl.sum(p, axis=1)
        m = m_new
    # partials (b·HKV, splits, R, D + 2): the slice's unnormalised output, its sum of weights, its max
    out = part_ptr + (bh * tl.num_programs(1) + split) * R * (D + 2) + rows * (D + 2)
    row_ok = rows < R
    tl.store(out[:, None] + ds[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])
    tl.store(out + D, total, mask=row_ok)
    tl.store(out + D + 1, m, mask=row_ok)


@triton.jit
def _combine_kernel(part_ptr, o_ptr, SPLITS, HKV, R, so_b, so_h, so_r, D: tl.constexpr, DP: tl.constexpr,
                    BS: tl.constexpr, PDL: tl.constexpr):
    wait_for_inputs(PDL)
    bh, r = tl.program_id(0), tl.program_id(1)
    splits, ds = tl.arange(0, BS), tl.arange(0, DP)
    d_ok = ds < D
    ok = splits < SPLITS
    base = part_ptr + (bh * SPLITS + splits) * R * (D + 2) + r * (D + 2)
    m = tl.load(base + D + 1, mask=ok, other=float("-inf"))
    weight = tl.exp(m - tl.max(m, axis=0))
    weight = tl.where(m == float("-inf"), 0.0, weight)  # a slice with every key masked
    total = tl.sum(weight * tl.load(base + D, mask=ok, other=0.0), axis=0)
    acc = tl.sum(weight[:, None] * tl.load(base[:, None] + ds[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0),
                 axis=0)
    b, h = bh // HKV, bh % HKV
    tl.store(o_ptr + b * so_b + h * so_h + r * so_r + ds, (acc / total).to(o_ptr.dtype.element_ty), mask=d_ok)


BN = 64  # keys per step of a program


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
                     keys_per_split: int | None = None) -> torch.Tensor:
    """softmax(q·kᵀ/√d + mask)·v for q (b, hkv, r, d): the r query heads of each KV head at one
    position, over k, v (b, hkv, S, d). mask: bool (b|1, S), True where a key may be attended to;
    every query needs one. keys_per_split: keys per program (default: enough programs for two per
    SM). Returns (b, hkv, r, d) in q's dtype."""
    b, hkv, r, d = q.shape
    s = k.shape[2]
    if k.shape != (b, hkv, s, d) or v.shape != k.shape:
        raise ValueError(f"k, v: expected shape ({b}, {hkv}, S, {d}), got {tuple(k.shape)} and {tuple(v.shape)}")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if mask is not None:
        if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[1] != s or mask.shape[0] not in (1, b):
            raise ValueError(f"mask: expected bool ({b}|1, {s}), got {mask.dtype} {tuple(mask.shape)}")
        mask = mask.expand(b, s).view(torch.uint8)
    if keys_per_split is None:
        keys_per_split = cdiv(s, max(1, 2 * _sm_count(q.device) // (b * hkv)))
    keys_per_split = cdiv(max(1, keys_per_split), BN) * BN
    splits = cdiv(s, keys_per_split)
    part = torch.empty(b * hkv, splits, r, d + 2, dtype=torch.float32, device=q.device)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    m = mask if mask is not None else part
    m_strides = mask.stride() if mask is not None else (0, 0)
    dp = max(16, next_power_of_2(d))  # the head size padded to a power of two
    _split_kernel[(b * hkv, splits)](
        q, k, v, m, part, s, hkv, r, keys_per_split, d ** -0.5, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *m_strides, D=d, DP=dp, RP=max(16, next_power_of_2(r)), BN=BN, HAS_MASK=mask is not None,
        **dependent_launch(q), **launch_opts(4, 2))
    _combine_kernel[(b * hkv, r)](part, out, splits, hkv, r, *out.stride()[:3], D=d, DP=dp,
                                  BS=max(2, next_power_of_2(splits)), **dependent_launch(q))
    return out
