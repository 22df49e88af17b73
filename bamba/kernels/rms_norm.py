"""RMSNorm (optionally after the residual stream's add), Mamba2's gated RMSNorm and SwiGLU's
silu(gate)·up, each in one launch (inference on CUDA).

PyTorch spells these as 8 (9 with the add), 12 and 2 elementwise kernels (casts, square, mean,
rsqrt, products, and a cast of the weight). In a decode step each of those kernels moves a few KB
and costs a few µs, so they were a large share of a token's time. These kernels evaluate the same
expressions in the same dtypes as `BambaRMSNorm` / `BambaRMSNormGated` / `BambaMLP`, one program
per row and group, so they agree with them up to the order of the fp32 sum (the add and silu·up:
the same roundings).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .ssd_common import dependent_launch
from .utils import cdiv, next_power_of_2, silu, swiglu, wait_for_inputs


@triton.jit
def norm_input(x_ptr, res_ptr, gate_ptr, cols, ok, RESIDUAL: tl.constexpr, GATED: tl.constexpr):
    """The norm's input h in fp32 over columns cols of one row: x; with RESIDUAL, residual + x
    rounded to x's dtype, as PyTorch adds them (the residual stream's next value, exact in fp32);
    with GATED, x·silu(gate)."""
    h = tl.load(x_ptr + cols, mask=ok, other=0.0)
    if RESIDUAL:
        h = (tl.load(res_ptr + cols, mask=ok, other=0.0).to(tl.float32) + h.to(tl.float32)).to(x_ptr.dtype.element_ty)
    h = h.to(tl.float32)
    if GATED:
        h = h * silu(tl.load(gate_ptr + cols, mask=ok, other=0.0).to(tl.float32))
    return h


@triton.jit
def inverse_rms(h, size, eps):
    """1 / rms(h) over the size values of h (h is zero past them)."""
    return tl.math.rsqrt(tl.sum(h * h, axis=0) / size + eps)


@triton.jit
def weighted(h, w, x_dtype, GATED: tl.constexpr):
    """The normalised h times the norm's weight w, in fp32 before the output's rounding: gated,
    weight.float() · h; else weight · h.to(x's dtype)."""
    if GATED:
        return w.to(tl.float32) * h
    return w.to(tl.float32) * h.to(x_dtype).to(tl.float32)


@triton.jit
def _rms_norm_kernel(x_ptr, gate_ptr, w_ptr, out_ptr, res_ptr, G, sx_row, sg_row, so_row, sr_row, eps,
                     GATED: tl.constexpr, RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    cols = tl.program_id(1) * G + tl.arange(0, BLOCK)
    ok = tl.arange(0, BLOCK) < G
    h = norm_input(x_ptr + row * sx_row, res_ptr + row * sr_row, gate_ptr + row * sg_row, cols, ok, RESIDUAL, GATED)
    if RESIDUAL:  # the sum, written over the residual
        tl.store(res_ptr + row * sr_row + cols, h.to(res_ptr.dtype.element_ty), mask=ok)
    out = weighted(h * inverse_rms(h, G, eps), tl.load(w_ptr + cols, mask=ok, other=0.0), x_ptr.dtype.element_ty,
                   GATED)
    # gated: in the gate's dtype; else in the promoted dtype of weight and x
    tl.store(out_ptr + row * so_row + cols, out.to(out_ptr.dtype.element_ty), mask=ok)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as (rows, d) with unit column stride; row strides are free (the gate is a view of the
    input projection's output)."""
    r = t.reshape(-1, t.shape[-1])
    return r if r.stride(1) == 1 else r.contiguous()


def _launch(x, gate, weight, group_size, eps, out_dtype, residual=None):
    """(norm, residual stream). With a residual, the sum is written over it and, where the dtypes
    allow, the norm over x: each program reads its row before writing it."""
    d = x.shape[-1]
    rows = _rows(x)
    gates = rows if gate is None else _rows(gate)
    res = rows if residual is None else _rows(residual)
    in_place = residual is not None and out_dtype == x.dtype
    out = rows if in_place else torch.empty(rows.shape, dtype=out_dtype, device=x.device)
    block = max(16, next_power_of_2(group_size))
    _rms_norm_kernel[(rows.shape[0], d // group_size)](
        rows, gates, weight, out, res, group_size, rows.stride(0), gates.stride(0), out.stride(0), res.stride(0),
        eps, GATED=gate is not None, RESIDUAL=residual is not None, BLOCK=block,
        num_warps=min(16, max(1, block // 512)), **dependent_launch(x))
    return out.view(x.shape), res.view(x.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight · (x / rms(x)).to(x.dtype) over the last dim; the dtype of weight · x."""
    return _launch(x, None, weight, x.shape[-1], eps, torch.promote_types(weight.dtype, x.dtype))[0]


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(s), s) for s = residual + x in x's dtype (x and residual of one shape and dtype).

    Both inputs are consumed, as in the residual stream of a decoder: s is written over residual
    and the norm over x (unless the weight's dtype promotes it), so the add allocates nothing and
    keeps no more activations alive than the unfused add and norm."""
    return _launch(x, None, weight, x.shape[-1], eps, torch.promote_types(weight.dtype, x.dtype), residual)


def rms_norm_gated(y: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, group_size: int,
                   eps: float) -> torch.Tensor:
    """(weight · norm(y·silu(gate))) in gate's dtype, normalised per group of group_size channels
    of the last dim, computed in fp32."""
    return _launch(y, gate, weight, group_size, eps, gate.dtype)[0]


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, out_ptr, D, sg_row, su_row, BLOCK: tl.constexpr, PDL: tl.constexpr):
    wait_for_inputs(PDL)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < D
    row = tl.program_id(0)
    g = tl.load(g_ptr + row * sg_row + cols, mask=ok, other=0.0)
    u = tl.load(u_ptr + row * su_row + cols, mask=ok, other=0.0)
    tl.store(out_ptr + row * D + cols, swiglu(g, u).to(out_ptr.dtype.element_ty), mask=ok)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) · up (SwiGLU's product; one shape and dtype), rounded as PyTorch's two kernels round."""
    g, u = _rows(gate), _rows(up)
    out = torch.empty(g.shape, dtype=gate.dtype, device=gate.device)
    block = min(4096, max(16, next_power_of_2(g.shape[1])))
    _silu_mul_kernel[(g.shape[0], cdiv(g.shape[1], block))](g, u, out, g.shape[1], g.stride(0), u.stride(0),
                                                          BLOCK=block, num_warps=8 if block >= 2048 else 4,
                                                          **dependent_launch(gate))
    return out.view(gate.shape)
