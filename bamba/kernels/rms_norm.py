"""RMSNorm and Mamba2's gated RMSNorm, each in one launch (inference on CUDA).

PyTorch spells these norms as 8 and 12 elementwise kernels (casts, square, mean, rsqrt,
products, and a cast of the weight). In a decode step each of those kernels moves a few KB and
costs a few µs, so the norms were a large share of a token's time. These kernels evaluate the same
expressions in the same dtypes as `BambaRMSNorm` / `BambaRMSNormGated`, one program per row and
group, so they agree with them up to the order of the fp32 sum.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import next_power_of_2


@triton.jit
def _rms_norm_kernel(x_ptr, gate_ptr, w_ptr, out_ptr, G, sx_row, sg_row, so_row, eps,
                     GATED: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * G + tl.arange(0, BLOCK)
    ok = tl.arange(0, BLOCK) < G
    h = tl.load(x_ptr + row * sx_row + cols, mask=ok, other=0.0).to(tl.float32)
    if GATED:  # y·silu(gate), silu(z) = z / (1 + exp(−z)) as PyTorch computes it
        z = tl.load(gate_ptr + row * sg_row + cols, mask=ok, other=0.0).to(tl.float32)
        h = h * (z / (1.0 + tl.exp(-z)))
    h = h * tl.math.rsqrt(tl.sum(h * h, axis=0) / G + eps)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    if GATED:  # weight.float() · h, then the gate's dtype
        out = w * h
    else:  # weight · h.to(x.dtype), in the promoted dtype of the two
        out = w * h.to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * so_row + cols, out.to(out_ptr.dtype.element_ty), mask=ok)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as (rows, d) with unit column stride; row strides are free (the gate is a view of the
    input projection's output)."""
    r = t.reshape(-1, t.shape[-1])
    return r if r.stride(1) == 1 else r.contiguous()


def _launch(x, gate, weight, group_size, eps, out_dtype):
    d = x.shape[-1]
    rows = _rows(x)
    gates = rows if gate is None else _rows(gate)
    out = torch.empty(rows.shape, dtype=out_dtype, device=x.device)
    block = max(16, next_power_of_2(group_size))
    _rms_norm_kernel[(rows.shape[0], d // group_size)](
        rows, gates, weight, out, group_size, rows.stride(0), gates.stride(0), out.stride(0), eps,
        GATED=gate is not None, BLOCK=block, num_warps=min(16, max(1, block // 512)))
    return out.view(x.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight · (x / rms(x)).to(x.dtype) over the last dim; the dtype of weight · x."""
    return _launch(x, None, weight, x.shape[-1], eps, torch.promote_types(weight.dtype, x.dtype))


def rms_norm_gated(y: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, group_size: int,
                   eps: float) -> torch.Tensor:
    """(weight · norm(y·silu(gate))) in gate's dtype, normalised per group of group_size channels
    of the last dim, computed in fp32."""
    return _launch(y, gate, weight, group_size, eps, gate.dtype)
