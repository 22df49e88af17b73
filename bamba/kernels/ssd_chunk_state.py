"""Kernel 3 of the chunked scan: each chunk's own final state S_c = Σ_j exp(cs_last−cs_j)·dt_j·x_j·B_jᵀ.

Optionally (FUSE_DT, used by `optimized`) the dt transform and the cumsum are computed here
instead of by a separate kernel, and (FUSE_CB) extra programs on axis 0 compute the C·Bᵀ tiles,
so one launch replaces three.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .ssd_bmm import cb_tile, cb_tiles
from .ssd_chunk_cumsum import load_dt, process_dt_raw, raw_dt
from .ssd_common import Prepared, launch_opts, pick, tile, use_tuned, work_bucket
from .utils import cdiv, decay, kernel_dt_limit, LOG2E_C, mm


@triton.jit
def _weighted_state(acc, xv, bv, d_k, cs_k, cs_last, EXP2: tl.constexpr):
    """acc + Σ_t exp(cs_last − cs_t)·dt_t·x_t·B_tᵀ, xv (BP × positions), bv (positions × BN)."""
    w = decay(cs_last - cs_k, EXP2) * d_k
    return acc + mm((xv.to(tl.float32) * w[None, :]).to(bv.dtype), bv)


@triton.jit
def state_block(acc, x_base, b_base, pos, valid, ps, ns, d_k, cs_k, cs_last, P, N,
                sx_l, sx_p, sb_l, sb_n, EXP2: tl.constexpr):
    """_weighted_state over one block of positions pos of a chunk, by pointer loads."""
    xv = tl.load(x_base + pos[None, :] * sx_l + ps[:, None] * sx_p,
                 mask=valid[None, :] & (ps < P)[:, None], other=0.0)
    bv = tl.load(b_base + pos[:, None] * sb_l + ns[None, :] * sb_n,
                 mask=valid[:, None] & (ns < N)[None, :], other=0.0)
    return _weighted_state(acc, xv, bv, d_k, cs_k, cs_last, EXP2)


@triton.jit
def state_block_tma(acc, x_desc, b_desc, pid_b, row, x_col, b_col, d_k, cs_k, cs_last,
                    BK: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, EXP2: tl.constexpr):
    """state_block with the tiles fetched by descriptors over x (b, l, h·p) and B (b, l, g·n):
    no address or mask arithmetic (rows past the sequence's end come back as zeros; columns past
    p or n only reach state rows and columns that are never stored)."""
    xv = tl.trans(x_desc.load([pid_b, row, x_col]).reshape(BK, BP))
    bv = b_desc.load([pid_b, row, b_col]).reshape(BK, BN)
    return _weighted_state(acc, xv, bv, d_k, cs_k, cs_last, EXP2)


@triton.jit
def head_rate(A_ptr, h, EXP2: tl.constexpr):
    """A of head h in the cumsum's units (log2 units for exp2 decays)."""
    a = tl.load(A_ptr + h).to(tl.float32)
    if EXP2:
        a = a * LOG2E_C
    return a


@triton.jit
def chunk_raw_dt(raw_base, c, L, sr_l, CHUNK: tl.constexpr):
    """The raw dt of one head over all of chunk c (fused_chunk_dt's input)."""
    return raw_dt(raw_base, c * CHUNK + tl.arange(0, CHUNK), L, sr_l)


@triton.jit
def fused_chunk_dt(raw, bias_ptr, h, a, c, L, dt_ptr, cs_ptr, cs_base, store, dt_min, dt_max,
                   HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CHUNK: tl.constexpr):
    """FUSE_DT: dt and its cumsum over all of chunk c, from its raw dt (chunk_raw_dt). One
    program per (chunk, head) `store`s both for the scan kernel. Returns (dt, cs, cs at the
    chunk's end)."""
    t = tl.arange(0, CHUNK)
    d = process_dt_raw(raw, bias_ptr, h, c * CHUNK + t < L, HAS_BIAS, SOFTPLUS, dt_min, dt_max)
    cs = tl.cumsum(d * a, axis=0)
    if store:
        tl.store(dt_ptr + cs_base + t, d)
        tl.store(cs_ptr + cs_base + t, cs)
    return d, cs, tl.sum(d * a, axis=0)


@triton.jit
def block_dt(dt_ptr, cs_ptr, cs_base, t, valid, raw_base, bias_ptr, h, a, pos, L, sr_l, prefix, dt_min, dt_max,
             FUSE_DT: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """dt and cs at one block t of a chunk's positions: under FUSE_DT recomputed from the raw dt
    after `prefix` (the cumsum before the block, returned advanced), else loaded."""
    if FUSE_DT:
        d = load_dt(raw_base, bias_ptr, h, pos, L, sr_l, HAS_BIAS, SOFTPLUS, dt_min, dt_max)
        cs = prefix + tl.cumsum(d * a, axis=0)
        prefix += tl.sum(d * a, axis=0)
    else:
        d = tl.load(dt_ptr + cs_base + t, mask=valid, other=0.0)
        cs = tl.load(cs_ptr + cs_base + t, mask=valid, other=0.0)
    return d, cs, prefix


@triton.jit
def _chunk_state_kernel(x_ptr, b_ptr, dt_ptr, cs_ptr, st_ptr,
                        dtraw_ptr, A_ptr, bias_ptr, c_ptr, cb_ptr, dt_min, dt_max,
                        L, H, P, N, HPG, NC, NCL, C_OFF,
                        sx_b, sx_l, sx_h, sx_p, sb_b, sb_l, sb_g, sb_n,
                        sr_b, sr_l, sr_h, ss_b, ss_c, ss_h, ss_p, ss_n,
                        sc_b, sc_l, sc_g, sc_n, scb_b, scb_c, scb_g, scb_m, scb_k,
                        CHUNK: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                        FUSE_DT: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                        EXP2: tl.constexpr, FUSE_CB: tl.constexpr,
                        CB_BM: tl.constexpr, CB_BK: tl.constexpr, CB_BN: tl.constexpr):
    pid0 = tl.program_id(0)
    pid_bc = tl.program_id(1)
    h = tl.program_id(2)
    pid_b = pid_bc // NCL
    c = C_OFF + pid_bc % NCL
    gi = h // HPG
    npn = tl.cdiv(P, BP) * tl.cdiv(N, BN)
    if pid0 < npn:
        pid_p = pid0 // tl.cdiv(N, BN)
        pid_n = pid0 % tl.cdiv(N, BN)
        ps = pid_p * BP + tl.arange(0, BP)
        ns = pid_n * BN + tl.arange(0, BN)
        cs_base = ((pid_b * H + h) * NC + c) * CHUNK
        a = head_rate(A_ptr, h, EXP2)
        raw_base = dtraw_ptr + pid_b * sr_b + h * sr_h
        if FUSE_DT:
            _, _, cs_last = fused_chunk_dt(chunk_raw_dt(raw_base, c, L, sr_l, CHUNK), bias_ptr, h, a, c, L,
                                           dt_ptr, cs_ptr, cs_base, pid0 == 0, dt_min, dt_max, HAS_BIAS, SOFTPLUS,
                                           CHUNK)
        else:
            cs_last = tl.load(cs_ptr + cs_base + CHUNK - 1)
        prefix = cs_last * 0.0
        acc = tl.zeros((BP, BN), dtype=tl.float32)
        x_base = x_ptr + pid_b * sx_b + h * sx_h
        b_base = b_ptr + pid_b * sb_b + gi * sb_g
        kmax = tl.minimum(CHUNK, L - c * CHUNK)
        for k0 in range(0, kmax, BK):
            t = k0 + tl.arange(0, BK)
            pos = c * CHUNK + t
            valid = t < kmax
            d_k, cs_k, prefix = block_dt(dt_ptr, cs_ptr, cs_base, t, valid, raw_base, bias_ptr, h, a, pos, L,
                                         sr_l, prefix, dt_min, dt_max, FUSE_DT, HAS_BIAS, SOFTPLUS)
            acc = state_block(acc, x_base, b_base, pos, valid, ps, ns, d_k, cs_k, cs_last, P, N,
                              sx_l, sx_p, sb_l, sb_n, EXP2)
        tl.store(st_ptr + pid_b * ss_b + (pid_bc % NCL) * ss_c + h * ss_h + ps[:, None] * ss_p + ns[None, :] * ss_n,
                 acc, mask=(ps < P)[:, None] & (ns < N)[None, :])
    else:
        if FUSE_CB:
            if h % HPG == 0:
                q = pid0 - npn
                nk = CHUNK // CB_BK
                cb_tile(c_ptr, b_ptr, cb_ptr, pid_b, c, gi, q // nk, q % nk, L, N,
                        sc_b, sc_l, sc_g, sc_n, sb_b, sb_l, sb_g, sb_n,
                        scb_b, scb_c, scb_g, scb_m, scb_k, CHUNK, CB_BM, CB_BK, CB_BN)


# Fixed tiles (capped by the problem's dims) for short chunks / explicit cfg; tuned otherwise.
STATE_CFG = dict(BP=64, BN=128, BK=64, num_warps=4, num_stages=2)
STATE_CANDIDATES = [dict(BP=bp, BN=bn, BK=bk, num_warps=w, num_stages=s)
                    for bp, bn, bk, w, s in ((64, 128, 64, 4, 2), (64, 128, 64, 8, 3), (64, 64, 64, 4, 3),
                                             (64, 128, 32, 4, 3), (32, 128, 64, 4, 2), (64, 128, 128, 8, 2))]


def chunk_state(pr: Prepared, dt_proc, cs, *, first_chunk=0, nchunks=None, fused=None,
                exp2=False, cfg=None):
    """States of chunks [first_chunk, first_chunk + nchunks): (b, nchunks, h, p, n) fp32.

    fused=(dt_softplus, dt_limit, cb) computes dt_proc/cs (written into the given buffers)
    and the C·Bᵀ tiles (into cb) in the same launch.
    """
    ncl = pr.nchunks - first_chunk if nchunks is None else nchunks
    st = torch.empty(pr.b, ncl, pr.h, pr.p, pr.n, dtype=torch.float32, device=pr.x.device)
    if fused is not None:
        softplus, dt_limit, cb = fused
        CB_BM, CB_BK, CB_BN = cb_tiles(pr)
        ncb = (pr.chunk // CB_BM) * (pr.chunk // CB_BK)
        cb_strides = cb.stride()
    else:
        softplus, dt_limit, cb = True, (0.0, float("inf")), st
        CB_BM = CB_BK = CB_BN = 16
        ncb = 0
        cb_strides = (0,) * 5
    args = (pr.x, pr.B, dt_proc, cs, st, pr.dt, pr.A, pr.dt_bias if pr.dt_bias is not None else pr.A,
            pr.C, cb, *kernel_dt_limit(dt_limit),
            pr.l, pr.h, pr.p, pr.n, pr.h // pr.g, pr.nchunks, ncl, first_chunk,
            *pr.x.stride(), *pr.B.stride(), *pr.dt.stride(), *st.stride(), *pr.C.stride(), *cb_strides)
    common = dict(CHUNK=pr.chunk, FUSE_DT=fused is not None, HAS_BIAS=pr.dt_bias is not None,
                  SOFTPLUS=softplus, EXP2=exp2, FUSE_CB=fused is not None,
                  CB_BM=CB_BM, CB_BK=CB_BK, CB_BN=CB_BN)

    def launch(c):
        BP, BN, BK = tile(pr.p, c["BP"]), tile(pr.n, c["BN"]), min(c["BK"], pr.chunk)
        npn = cdiv(pr.p, BP) * cdiv(pr.n, BN)
        _chunk_state_kernel[(npn + ncb, pr.b * ncl, pr.h)](
            *args, BP=BP, BN=BN, BK=BK, **common, **launch_opts(c["num_warps"], c["num_stages"]))

    if use_tuned(pr, cfg):
        key = ("chunk_state", pr.p, pr.n, pr.chunk, work_bucket(pr.b * ncl * pr.h), pr.x.dtype,
               fused is not None, exp2)
        launch(pick(key, STATE_CANDIDATES, launch))
    else:
        launch({**STATE_CFG, **(cfg or {})})
    return st
