"""x · Wᵀ for a single row of x: the weight projections of a batch-1 decode step.

A decode step reads every weight once, so its projections are bound by memory. At one row
cuBLAS's kernels read the weights at 0.18–0.93 of the H200's copy bandwidth (each timed alone,
L2 flushed), the least for the smaller matrices; here each program streams BN whole rows of W
in BK-wide steps, keeps a (BN × BK) fp32 partial sum, and reduces it once at the end. Same math
as `F.linear` (fp32 accumulation), another summation order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .ssd_common import dependent_launch, launch_opts
from .utils import cdiv, next_power_of_2, wait_for_inputs


@triton.jit
def _weight_block(w_ptr, rows, row_ok, k0, K, sw_n, BK: tl.constexpr):
    ks = k0 + tl.arange(0, BK)
    return tl.load(w_ptr + rows[:, None] * sw_n + ks[None, :], mask=row_ok[:, None] & (ks < K)[None, :], other=0.0)


@triton.jit
def _partial_sum(acc, w, x_ptr, k0, K, BK: tl.constexpr):
    ks = k0 + tl.arange(0, BK)
    xv = tl.load(x_ptr + ks, mask=ks < K, other=0.0)
    return acc + w.to(tl.float32) * xv.to(tl.float32)[None, :]


@triton.jit
def _gemv_kernel(w_ptr, x_ptr, y_ptr, N, K, sw_n, BN: tl.constexpr, BK: tl.constexpr, PDL: tl.constexpr,
                 EARLY: tl.constexpr):
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    row_ok = rows < N
    acc = tl.zeros((BN, BK), dtype=tl.float32)
    k_start = 0
    if EARLY:  # the first weight block streams in while the kernel ahead (which writes x) finishes
        w = _weight_block(w_ptr, rows, row_ok, 0, K, sw_n, BK)
        wait_for_inputs(PDL)
        acc = _partial_sum(acc, w, x_ptr, 0, K, BK)
        k_start = BK
    else:
        wait_for_inputs(PDL)
    for k0 in range(k_start, K, BK):
        acc = _partial_sum(acc, _weight_block(w_ptr, rows, row_ok, k0, K, sw_n, BK), x_ptr, k0, K, BK)
    tl.store(y_ptr + rows, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=row_ok)


# 16 rows by 1,024 columns, 8 warps: the best tile of a sweep on the H200 for 5 of the 7 decode
# shapes of Bamba-9B (with three or four steps in flight; the other two shapes preferred 4 rows).
BN, BK_MAX, NUM_WARPS, NUM_STAGES = 16, 1024, 8, 4


def gemv(x: torch.Tensor, weight: torch.Tensor, *, static_weight: bool = False) -> torch.Tensor:
    """x (..., K) holding one row, weight (N, K) -> (..., N) in x's dtype.

    static_weight: the weight is not written by the kernel launched just before this one (model
    weights), so its first block is read before waiting for that kernel: with programmatic
    dependent launch (ssd_common.dependent_launch), while that kernel still runs."""
    n, k = weight.shape
    if x.numel() != k or x.shape[-1] != k:
        raise ValueError(f"x: expected one row of {k} features, got shape {tuple(x.shape)}")
    xr = x.reshape(k).contiguous()
    w = weight if weight.stride(1) == 1 else weight.contiguous()
    y = torch.empty(n, dtype=x.dtype, device=x.device)
    pdl = dependent_launch(x)
    _gemv_kernel[(cdiv(n, BN),)](w, xr, y, n, k, w.stride(0), BN=BN, BK=min(BK_MAX, max(16, next_power_of_2(k))),
                                EARLY=static_weight and w is weight, **pdl,
                                **launch_opts(NUM_WARPS, NUM_STAGES))
    return y.view(*x.shape[:-1], n)
