"""x · Wᵀ for a single row of x: the weight projections of a batch-1 decode step.

A decode step reads every weight once, so its projections are bound by memory. At one row
cuBLAS's kernels read the weights at 0.18–0.93 of the H200's copy bandwidth (each timed alone,
L2 flushed), the least for the smaller matrices; here each program streams BN whole rows of W
in BK-wide steps, keeps a (BN × BK) fp32 partial sum, and reduces it once at the end. Same math
as `F.linear` (fp32 accumulation), another summation order.

Two fusions save the small launches between projections, each a few µs of a step:
- x may be a `NormedRow`: the RMSNorm (and the residual add before it) that produces x, left to
  the GEMV. Each program computes the row's 1/rms itself (the row is a few KB, read from the L2)
  and normalises each block of x as it streams the weights, with the roundings of
  `kernels.rms_norm`.
- `gemv_swiglu` runs SwiGLU's gate and up projections and silu(gate)·up in one launch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .rms_norm import inverse_rms, norm_input, weighted
from .ssd_common import dependent_launch, launch_opts
from .utils import cdiv, next_power_of_2, swiglu, wait_for_inputs


class NormedRow:
    """weight · rms_norm(h) of one row, computed by the GEMVs that read it (`gemv`, `gemv_swiglu`).

    h is x; with `residual`, residual + x rounded to x's dtype (the residual stream's next value,
    which every GEMV that reads the row also writes to `stream`); with `gate`, x·silu(gate) in
    fp32 (Mamba2's gated norm, one group over the whole row). Weight, residual and gate share x's
    dtype, which is then the normalised row's dtype, as in `kernels.rms_norm`."""

    def __init__(self, x: torch.Tensor, weight: torch.Tensor, eps: float, *, residual: torch.Tensor | None = None,
                 gate: torch.Tensor | None = None):
        if residual is not None and gate is not None:
            raise ValueError("a NormedRow takes a residual or a gate, not both")
        for name, t in (("weight", weight), ("residual", residual), ("gate", gate)):
            if t is not None and (t.dtype != x.dtype or t.shape[-1] != x.shape[-1]):
                raise ValueError(f"{name}: expected {x.shape[-1]} features in {x.dtype}, got shape "
                                 f"{tuple(t.shape)} in {t.dtype}")
        self.x, self.weight, self.eps, self.residual, self.gate = x, weight, eps, residual, gate
        self.stream = x if residual is None else torch.empty(x.shape, dtype=x.dtype, device=x.device)

    @property
    def shape(self) -> torch.Size:
        return self.x.shape


@triton.jit
def _weight_block(w_ptr, rows, row_ok, k0, K, sw_n, BK: tl.constexpr):
    # in the weights' dtype, converted where it is used: an early block's load is then not waited
    # for before wait_for_inputs
    ks = k0 + tl.arange(0, BK)
    return tl.load(w_ptr + rows[:, None] * sw_n + ks[None, :], mask=row_ok[:, None] & (ks < K)[None, :], other=0.0)


@triton.jit
def _row_inverse_rms(x_ptr, res_ptr, gate_ptr, stream_ptr, K, eps, RESIDUAL: tl.constexpr, GATED: tl.constexpr,
                     KB: tl.constexpr):
    """1/rms(h) of the whole row; program 0 writes residual + x to the stream."""
    ks = tl.arange(0, KB)
    ok = ks < K
    h = norm_input(x_ptr, res_ptr, gate_ptr, ks, ok, RESIDUAL, GATED)
    if RESIDUAL:
        if tl.program_id(0) == 0:
            tl.store(stream_ptr + ks, h.to(stream_ptr.dtype.element_ty), mask=ok)
    return inverse_rms(h, K, eps)


@triton.jit
def _partial_sum(acc, w, x_ptr, res_ptr, gate_ptr, nw_ptr, inv_rms, k0, K, BK: tl.constexpr, NORM: tl.constexpr,
                 RESIDUAL: tl.constexpr, GATED: tl.constexpr):
    ks = k0 + tl.arange(0, BK)
    ok = ks < K
    if NORM:  # as kernels.rms_norm computes it, in x's dtype
        h = norm_input(x_ptr, res_ptr, gate_ptr, ks, ok, RESIDUAL, GATED) * inv_rms
        xv = weighted(h, tl.load(nw_ptr + ks, mask=ok, other=0.0), x_ptr.dtype.element_ty, GATED)
        xv = xv.to(x_ptr.dtype.element_ty)
    else:
        xv = tl.load(x_ptr + ks, mask=ok, other=0.0)
    return acc + w.to(tl.float32) * xv.to(tl.float32)[None, :]


@triton.jit
def _gemv_kernel(w_ptr, up_ptr, x_ptr, res_ptr, gate_ptr, nw_ptr, stream_ptr, y_ptr, N, K, sw_n, su_n, eps,
                 BN: tl.constexpr, BK: tl.constexpr, KB: tl.constexpr, PDL: tl.constexpr, EARLY: tl.constexpr,
                 SWIGLU: tl.constexpr, NORM: tl.constexpr, RESIDUAL: tl.constexpr, GATED: tl.constexpr):
    # SWIGLU: w is the gate's weight, up_ptr the up projection's; y = silu(x·wᵀ)·(x·upᵀ).
    # NORM: x is normalised as it is read (NormedRow); nw_ptr is the norm's weight.
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    acc = tl.zeros((BN, BK), dtype=tl.float32)
    acc_up = tl.zeros((BN, BK), dtype=tl.float32)
    k_start = 0
    if EARLY:  # the first weight blocks stream in while the kernel ahead (which writes x) finishes
        w = _weight_block(w_ptr, rows, row_ok, 0, K, sw_n, BK)
        if SWIGLU:
            w_up = _weight_block(up_ptr, rows, row_ok, 0, K, su_n, BK)
    wait_for_inputs(PDL)
    inv_rms = 1.0
    if NORM:
        inv_rms = _row_inverse_rms(x_ptr, res_ptr, gate_ptr, stream_ptr, K, eps, RESIDUAL, GATED, KB)
    if EARLY:
        acc = _partial_sum(acc, w, x_ptr, res_ptr, gate_ptr, nw_ptr, inv_rms, 0, K, BK, NORM, RESIDUAL, GATED)
        if SWIGLU:
            acc_up = _partial_sum(acc_up, w_up, x_ptr, res_ptr, gate_ptr, nw_ptr, inv_rms, 0, K, BK, NORM,
                                  RESIDUAL, GATED)
        k_start = BK
    for k0 in range(k_start, K, BK):
        acc = _partial_sum(acc, _weight_block(w_ptr, rows, row_ok, k0, K, sw_n, BK), x_ptr, res_ptr, gate_ptr,
                           nw_ptr, inv_rms, k0, K, BK, NORM, RESIDUAL, GATED)
        if SWIGLU:
            acc_up = _partial_sum(acc_up, _weight_block(up_ptr, rows, row_ok, k0, K, su_n, BK), x_ptr, res_ptr,
                                  gate_ptr, nw_ptr, inv_rms, k0, K, BK, NORM, RESIDUAL, GATED)
    y = tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty)
    if SWIGLU:  # each projection rounded to the activations' dtype first, as two launches round them
        y = swiglu(y, tl.sum(acc_up, axis=1).to(y_ptr.dtype.element_ty)).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + rows, y, mask=row_ok)


# 16 rows by 1,024 columns, 8 warps: the best tile of a sweep on the H200 for 5 of the 7 decode
# shapes of Bamba-9B (with three or four steps in flight). Chains of one shape over distinct weights
# preferred 4 × 2,048 tiles by 1-6 %, but whole 32-layer decode steps were 4 % slower with them.
BN, BK_MAX, NUM_WARPS, NUM_STAGES = 16, 1024, 8, 4


def _one_row(x: torch.Tensor, k: int, name: str = "x") -> torch.Tensor:
    if x.numel() != k or x.shape[-1] != k:
        raise ValueError(f"{name}: expected one row of {k} features, got shape {tuple(x.shape)}")
    return x.reshape(k).contiguous()


def _unit_stride(w: torch.Tensor) -> torch.Tensor:
    return w if w.stride(1) == 1 else w.contiguous()


def _launch(x: torch.Tensor | NormedRow, weight: torch.Tensor, up: torch.Tensor | None, static_weight: bool):
    n, k = weight.shape
    row = x if isinstance(x, NormedRow) else None
    src = _one_row(row.x if row else x, k)
    w = _unit_stride(weight)
    u = w if up is None else _unit_stride(up)
    res = gate = nw = stream = src
    if row:
        res = src if row.residual is None else _one_row(row.residual, k, "residual")
        gate = src if row.gate is None else _one_row(row.gate, k, "gate")
        nw = _one_row(row.weight, k, "norm weight")
        stream = row.stream.view(k)  # allocated contiguous by NormedRow
    y = torch.empty(n, dtype=src.dtype, device=src.device)
    bn = BN if up is None else BN // 2  # two weights' rows per program: the plain tile's registers
    kb = max(16, next_power_of_2(k))  # the whole row, for its 1/rms
    _gemv_kernel[(cdiv(n, bn),)](
        w, u, src, res, gate, nw, stream, y, n, k, w.stride(0), u.stride(0), row.eps if row else 0.0,
        BN=bn, BK=min(BK_MAX, kb), KB=kb,
        EARLY=static_weight and w is weight and (up is None or u is up), SWIGLU=up is not None,
        NORM=row is not None, RESIDUAL=row is not None and row.residual is not None,
        GATED=row is not None and row.gate is not None, **dependent_launch(src),
        **launch_opts(NUM_WARPS, NUM_STAGES))
    return y.view(*(row.x if row else x).shape[:-1], n)


def gemv(x: torch.Tensor | NormedRow, weight: torch.Tensor, *, static_weight: bool = False) -> torch.Tensor:
    """x (..., K) holding one row, weight (N, K) -> (..., N) in x's dtype.

    static_weight: the weight is not written by the kernel launched just before this one (model
    weights), so its first block is read before waiting for that kernel: with programmatic
    dependent launch (ssd_common.dependent_launch), while that kernel still runs."""
    return _launch(x, weight, None, static_weight)


def gemv_swiglu(x: torch.Tensor | NormedRow, gate_weight: torch.Tensor, up_weight: torch.Tensor, *,
                static_weight: bool = False) -> torch.Tensor:
    """silu(x·gateᵀ)·(x·upᵀ) for one row x (..., K), weights (N, K) -> (..., N) in x's dtype, with the
    roundings of `gemv` for each projection and of `rms_norm.silu_mul` for the product, in one launch."""
    if up_weight.shape != gate_weight.shape:
        raise ValueError(f"up_weight: expected shape {tuple(gate_weight.shape)} (the gate's), "
                         f"got {tuple(up_weight.shape)}")
    return _launch(x, gate_weight, up_weight, static_weight)
