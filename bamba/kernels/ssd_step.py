"""One-token recurrent update (decode): state = exp(dt·A)·state + dt·x·Bᵀ; y = state·C + D·x.

`state` (b, h, p, n) fp32 is updated in place. An optional per-sequence reset flag zeroes the
state first (chunk-local strategies reset at chunk boundaries, like their scan).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .ssd_chunk_cumsum import load_dt
from .ssd_common import dependent_launch, launch_opts
from .utils import cdiv, decay, kernel_dt_limit, next_power_of_2, wait_for_inputs


@triton.jit
def _ssd_step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, reset_ptr,
                     y_ptr, dt_min, dt_max, H, P, N, HPG,
                     sst_b, sst_h, sst_p, sst_n, sx_b, sx_h, sx_p, sdt_b, sdt_h,
                     sb_b, sb_g, sb_n, sc_b, sc_g, sc_n, sy_b, sy_h, sy_p,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                     HAS_RESET: tl.constexpr, ZERO: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                     PDL: tl.constexpr):
    wait_for_inputs(PDL)
    pid_b = tl.program_id(0)
    h = tl.program_id(1)
    ps = tl.program_id(2) * BP + tl.arange(0, BP)
    ns = tl.arange(0, BN)
    gi = h // HPG
    pm = ps < P
    nm = ns < N
    st_ptrs = state_ptr + pid_b * sst_b + h * sst_h + ps[:, None] * sst_p + ns[None, :] * sst_n
    smask = pm[:, None] & nm[None, :]
    if ZERO:  # every sequence starts a chunk: the old state is not even read
        state = tl.zeros((BP, BN), dtype=tl.float32)
    else:
        state = tl.load(st_ptrs, mask=smask, other=0.0).to(tl.float32)
    if HAS_RESET:
        keep = tl.load(reset_ptr + pid_b) == 0
        state = tl.where(keep, state, 0.0)
    # one position, L = 1: load_dt handles bias/softplus/clamp exactly as the scan does
    d = tl.sum(load_dt(dt_ptr + pid_b * sdt_b + h * sdt_h, bias_ptr, h, tl.arange(0, 1), 1, 0,
                       HAS_BIAS, SOFTPLUS, dt_min, dt_max), axis=0)
    a = tl.load(A_ptr + h).to(tl.float32)
    xv = tl.load(x_ptr + pid_b * sx_b + h * sx_h + ps * sx_p, mask=pm, other=0.0).to(tl.float32)
    bv = tl.load(B_ptr + pid_b * sb_b + gi * sb_g + ns * sb_n, mask=nm, other=0.0).to(tl.float32)
    cv = tl.load(C_ptr + pid_b * sc_b + gi * sc_g + ns * sc_n, mask=nm, other=0.0).to(tl.float32)
    state = decay(d * a, False) * state + (d * xv)[:, None] * bv[None, :]
    tl.store(st_ptrs, state.to(state_ptr.dtype.element_ty), mask=smask)
    y = tl.sum(state * cv[None, :], axis=1)
    if HAS_D:
        y += xv * tl.load(D_ptr + h).to(tl.float32)
    tl.store(y_ptr + pid_b * sy_b + h * sy_h + ps * sy_p, y.to(y_ptr.dtype.element_ty), mask=pm)


def ssd_step_triton(state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True,
                    dt_limit=(0.0, float("inf")), reset=None):
    b, h, p = x.shape
    g, n = B.shape[1:]
    y = torch.empty_like(x)
    BN = max(16, next_power_of_2(n))
    BP = max(1, min(next_power_of_2(p), 4096 // BN))
    A = A.float()
    dummy = A
    # reset: None, a bool for all sequences (constexpr: no tensor op per token) or a (b,) bool tensor
    zero = reset is True
    per_seq = isinstance(reset, torch.Tensor)
    reset_t = reset.to(torch.int8).contiguous() if per_seq else dummy
    grid = (b, h, cdiv(p, BP))
    _ssd_step_kernel[grid](
        state, x, dt, A, B, C, D if D is not None else dummy, dt_bias if dt_bias is not None else dummy,
        reset_t, y, *kernel_dt_limit(dt_limit), h, p, n, h // g,
        *state.stride(), *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *y.stride(),
        HAS_D=D is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        HAS_RESET=per_seq, ZERO=zero, BP=BP, BN=BN, **launch_opts(4, 1), **dependent_launch(x))
    return y
