"""Kernel 4 of the chunked scan: H_c = exp(cs_last,c)·H_{c−1} + S_c, sequential over chunks.

Writes the state entering every chunk (H_{c−1}, what the scan needs) and the final state.
The entering states may overwrite the chunk states in place (same element, same program) or go
to a separate buffer in a narrower dtype (`optimized` hands bf16 states to the scan).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .ssd_common import Prepared, launch_opts
from .utils import cdiv, decay, next_power_of_2


@triton.jit
def _state_passing_kernel(st_ptr, out_ptr, init_ptr, final_ptr, cs_ptr, H, PN, NC,
                          s_cs_b, s_cs_h, s_cs_c,
                          HAS_INIT: tl.constexpr, EXP2: tl.constexpr, CHUNK: tl.constexpr,
                          BS: tl.constexpr):
    pid = tl.program_id(0)
    pid_b = tl.program_id(1)
    h = tl.program_id(2)
    offs = pid * BS + tl.arange(0, BS)
    m = offs < PN
    bh = (pid_b * H + h) * PN
    if HAS_INIT:
        state = tl.load(init_ptr + bh + offs, mask=m, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BS,), dtype=tl.float32)
    cs_base = cs_ptr + pid_b * s_cs_b + h * s_cs_h + CHUNK - 1
    # software prefetch: chunk c+1's state and decay load while chunk c is combined
    s_next = tl.load(st_ptr + (pid_b * NC * H + h) * PN + offs, mask=m, other=0.0)
    e_next = tl.load(cs_base)
    for c in range(NC):
        off_c = ((pid_b * NC + c) * H + h) * PN + offs
        s_c = s_next
        e = e_next
        lim = tl.where(c + 1 < NC, PN, 0)
        s_next = tl.load(st_ptr + off_c + H * PN, mask=offs < lim, other=0.0)
        e_next = tl.load(cs_base + (c + 1) * s_cs_c, mask=c + 1 < NC, other=0.0)
        tl.store(out_ptr + off_c, state.to(out_ptr.dtype.element_ty), mask=m)
        state = decay(e, EXP2) * state + s_c
    tl.store(final_ptr + bh + offs, state, mask=m)


def state_passing(pr: Prepared, states, cs, *, out_dtype=None, exp2=False, BS=None):
    """states (b, nc, h, p, n) fp32 contiguous; cs (b, h, nc, Q) (any strides on dims 0-2).

    Returns (entering states (b, nc, h, p, n) — ``states`` itself when out_dtype is None —,
    final state (b, h, p, n) fp32).
    """
    b, nc, h, p, n = states.shape
    out = states if out_dtype is None else torch.empty(states.shape, dtype=out_dtype, device=states.device)
    final = torch.empty(b, h, p, n, dtype=torch.float32, device=states.device)
    BS = BS or min(256, next_power_of_2(p * n))
    init = pr.initial_state
    grid = (cdiv(p * n, BS), b, h)
    _state_passing_kernel[grid](states, out, init if init is not None else final, final, cs,
                                h, p * n, nc, cs.stride(0), cs.stride(1), cs.stride(2),
                                HAS_INIT=init is not None, EXP2=exp2, CHUNK=pr.chunk, BS=BS,
                                **launch_opts(2, 1))
    return out, final
