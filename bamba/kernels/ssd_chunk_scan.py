"""Kernel 5 of the chunked scan, and the `default` pipeline.

y_i = Σ_{j≤i} (C_i·B_j)·exp(cs_i−cs_j)·dt_j·x_j  +  exp(cs_i)·(H_{c−1}·C_i)  +  D·x_i
(intra-chunk part from the precomputed C·Bᵀ block, inter-chunk part from the entering state).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .ssd_chunk_cumsum import chunk_cumsum
from .ssd_chunk_state_passing import entering_states
from .ssd_common import (Prepared, cb_scratch, contiguous_rows, hand_off_dtype, launch_opts, packed_rows, pick,
                         prepare, rows_aligned, tile, use_tma, use_tuned, work_bucket)
from .utils import cdiv, decay, mm

PREV_NONE, PREV_PER_CHUNK, PREV_FIRST_CHUNK = 0, 1, 2


@triton.jit
def _prev_head(acc, cv, hp_base, ps, p_ok, nn, N, sp_p, sp_n):
    """acc += C_i · H_{c−1}ᵀ for one head (the C tile cv is shared by the heads of a group)."""
    hv = tl.load(hp_base + ps[None, :] * sp_p + nn[:, None] * sp_n,
                 mask=p_ok[None, :] & (nn < N)[:, None], other=0.0)
    return acc + mm(cv, hv.to(cv.dtype))


@triton.jit
def _decay_rows(acc, cs_m, EXP2: tl.constexpr):
    return acc * decay(cs_m, EXP2)[:, None]


@triton.jit
def _intra_block(acc, cb, cs_m, cs_row, dt_row, xv, ks, EXP2: tl.constexpr):
    """acc += (C·Bᵀ ∘ decay ∘ dt) · x over one key block ks of one head. No mask: C·Bᵀ is zero
    above the diagonal (ssd_bmm.cb_tile), dt and cs are finite on a whole chunk (0 and flat past
    the sequence end) and x is zero there, so masked terms come out 0; masks were half of this
    loop's instructions in the sm_90 build."""
    w = cb * decay(cs_m[:, None] - tl.load(cs_row + ks)[None, :], EXP2) * tl.load(dt_row + ks)[None, :]
    return acc + mm(w.to(xv.dtype), xv)


@triton.jit
def _intra_head(acc, cb, cs_m, cs_row, dt_row, x_head, ks, k_ok, c, ps, p_ok, sx_l, sx_p,
                CHUNK: tl.constexpr, EXP2: tl.constexpr):
    """_intra_block for one head of the group (cb is shared by the group's heads)."""
    xv = tl.load(x_head + (c * CHUNK + ks)[:, None] * sx_l + ps[None, :] * sx_p,
                 mask=k_ok[:, None] & p_ok[None, :], other=0.0)
    return _intra_block(acc, cb, cs_m, cs_row, dt_row, xv, ks, EXP2)


@triton.jit
def _finish_head(acc, x_base, y_base, d_ptr, h, pm, m_ok, ps, p_ok, sx_l, sx_p, sy_l, sy_p,
                 HAS_D: tl.constexpr):
    if HAS_D:
        xm = tl.load(x_base + pm[:, None] * sx_l + ps[None, :] * sx_p,
                     mask=m_ok[:, None] & p_ok[None, :], other=0.0)
        acc += xm.to(tl.float32) * tl.load(d_ptr + h).to(tl.float32)
    tl.store(y_base + pm[:, None] * sy_l + ps[None, :] * sy_p,
             acc.to(y_base.dtype.element_ty), mask=m_ok[:, None] & p_ok[None, :])


@triton.jit
def _program_block(H, P, HPG, NC, CHUNK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, HB: tl.constexpr):
    """The (BM × BN) block of y this program computes, for HB heads from h0: batch, chunk, h0, its
    group, row block, first column, the block's rows in the chunk and its columns, and the
    offset of (h0, chunk) in the dt/cs buffers.

    Programs start in grid order (axis 0 fastest), so the row blocks of a (chunk, head) start
    together and share its x tiles in L2, and all heads of a chunk run close in time and share
    its C·Bᵀ tiles (which outgrow the L2 at 8 × 16k tokens); the last row block, with the most
    key blocks, starts first."""
    pid0 = tl.program_id(0)
    h0 = tl.program_id(1) * HB
    pid_bc = tl.program_id(2)
    pid_b = pid_bc // NC
    c = pid_bc % NC
    n_p = tl.cdiv(P, BN)
    pid_m = CHUNK // BM - 1 - pid0 // n_p
    p0 = (pid0 % n_p) * BN
    cs_base = ((pid_b * H + h0) * NC + c) * CHUNK
    return pid_b, c, h0, h0 // HPG, pid_m, p0, pid_m * BM + tl.arange(0, BM), p0 + tl.arange(0, BN), cs_base


@triton.jit
def _chunk_scan_kernel(x_ptr, c_ptr, cb_ptr, dt_ptr, cs_ptr, prev_ptr, d_ptr, y_ptr,
                       L, H, P, N, HPG, NC,
                       sx_b, sx_l, sx_h, sx_p, sc_b, sc_l, sc_g, sc_n,
                       scb_b, scb_c, scb_g, scb_m, scb_k,
                       sp_b, sp_c, sp_h, sp_p, sp_n, sy_b, sy_l, sy_h, sy_p,
                       CHUNK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                       BKN: tl.constexpr, PREV: tl.constexpr, HAS_D: tl.constexpr,
                       EXP2: tl.constexpr, HB: tl.constexpr):
    # One program: a (BM × BN) block of y for HB (1, 2 or 4) heads of one group. The heads share
    # C·Bᵀ and C, so HB > 1 loads those tiles once for all of them (with g = 1 every head
    # re-reads them otherwise: most of this kernel's L2 traffic). HB = 1 is the plain kernel.
    pid_b, c, h0, gi, pid_m, p0, ms, ps, cs_base = _program_block(H, P, HPG, NC, CHUNK, BM, BN, HB)
    pm = c * CHUNK + ms
    m_ok = pm < L
    p_ok = ps < P
    hs = NC * CHUNK  # dt/cs offset between consecutive heads
    cs_m0 = tl.load(cs_ptr + cs_base + ms, mask=ms < CHUNK, other=0.0)
    cs_m1 = cs_m0
    cs_m2 = cs_m0
    cs_m3 = cs_m0
    if HB > 1:
        cs_m1 = tl.load(cs_ptr + cs_base + hs + ms, mask=ms < CHUNK, other=0.0)
    if HB > 2:
        cs_m2 = tl.load(cs_ptr + cs_base + 2 * hs + ms, mask=ms < CHUNK, other=0.0)
        cs_m3 = tl.load(cs_ptr + cs_base + 3 * hs + ms, mask=ms < CHUNK, other=0.0)
    acc0 = tl.zeros((BM, BN), dtype=tl.float32)
    acc1 = tl.zeros((BM, BN), dtype=tl.float32)
    acc2 = tl.zeros((BM, BN), dtype=tl.float32)
    acc3 = tl.zeros((BM, BN), dtype=tl.float32)
    c_base = c_ptr + pid_b * sc_b + gi * sc_g

    if PREV != 0:  # inter-chunk part: exp(cs_i) · C_i · H_{c−1}ᵀ
        if PREV == 1:
            p_base = prev_ptr + pid_b * sp_b + c * sp_c + h0 * sp_h
            lim = L
        else:  # only the first chunk sees the given initial state
            p_base = prev_ptr + pid_b * sp_b + h0 * sp_h
            lim = tl.where(c == 0, L, 0)
        for n0 in range(0, N, BKN):
            nn = n0 + tl.arange(0, BKN)
            cv = tl.load(c_base + pm[:, None] * sc_l + nn[None, :] * sc_n,
                         mask=(pm < lim)[:, None] & (nn < N)[None, :], other=0.0)
            acc0 = _prev_head(acc0, cv, p_base, ps, p_ok, nn, N, sp_p, sp_n)
            if HB > 1:
                acc1 = _prev_head(acc1, cv, p_base + sp_h, ps, p_ok, nn, N, sp_p, sp_n)
            if HB > 2:
                acc2 = _prev_head(acc2, cv, p_base + 2 * sp_h, ps, p_ok, nn, N, sp_p, sp_n)
                acc3 = _prev_head(acc3, cv, p_base + 3 * sp_h, ps, p_ok, nn, N, sp_p, sp_n)
        acc0 = _decay_rows(acc0, cs_m0, EXP2)
        if HB > 1:
            acc1 = _decay_rows(acc1, cs_m1, EXP2)
        if HB > 2:
            acc2 = _decay_rows(acc2, cs_m2, EXP2)
            acc3 = _decay_rows(acc3, cs_m3, EXP2)

    # intra-chunk part, causal: only key blocks up to this row block
    x_base = x_ptr + pid_b * sx_b + h0 * sx_h
    cb_base = cb_ptr + pid_b * scb_b + c * scb_c + gi * scb_g
    dt_row = dt_ptr + cs_base
    cs_row = cs_ptr + cs_base
    kmax = tl.minimum((pid_m + 1) * BM, tl.minimum(CHUNK, L - c * CHUNK))
    for k0 in range(0, kmax, BK):
        ks = k0 + tl.arange(0, BK)
        k_ok = ks < kmax
        cb = tl.load(cb_base + ms[:, None] * scb_m + ks[None, :] * scb_k)
        acc0 = _intra_head(acc0, cb, cs_m0, cs_row, dt_row, x_base, ks, k_ok, c, ps, p_ok,
                           sx_l, sx_p, CHUNK, EXP2)
        if HB > 1:
            acc1 = _intra_head(acc1, cb, cs_m1, cs_row + hs, dt_row + hs, x_base + sx_h, ks, k_ok, c,
                               ps, p_ok, sx_l, sx_p, CHUNK, EXP2)
        if HB > 2:
            acc2 = _intra_head(acc2, cb, cs_m2, cs_row + 2 * hs, dt_row + 2 * hs, x_base + 2 * sx_h, ks,
                               k_ok, c, ps, p_ok, sx_l, sx_p, CHUNK, EXP2)
            acc3 = _intra_head(acc3, cb, cs_m3, cs_row + 3 * hs, dt_row + 3 * hs, x_base + 3 * sx_h, ks,
                               k_ok, c, ps, p_ok, sx_l, sx_p, CHUNK, EXP2)

    y_base = y_ptr + pid_b * sy_b + h0 * sy_h
    _finish_head(acc0, x_base, y_base, d_ptr, h0, pm, m_ok, ps, p_ok, sx_l, sx_p, sy_l, sy_p, HAS_D)
    if HB > 1:
        _finish_head(acc1, x_base + sx_h, y_base + sy_h, d_ptr, h0 + 1, pm, m_ok, ps, p_ok,
                     sx_l, sx_p, sy_l, sy_p, HAS_D)
    if HB > 2:
        _finish_head(acc2, x_base + 2 * sx_h, y_base + 2 * sy_h, d_ptr, h0 + 2, pm, m_ok, ps, p_ok,
                     sx_l, sx_p, sy_l, sy_p, HAS_D)
        _finish_head(acc3, x_base + 3 * sx_h, y_base + 3 * sy_h, d_ptr, h0 + 3, pm, m_ok, ps, p_ok,
                     sx_l, sx_p, sy_l, sy_p, HAS_D)


@triton.jit
def _tma_prev_head(acc, cv, p_desc, prow, n0):
    """acc += C_i · H_{c−1}ᵀ over one state-dim block for one head (cv shared by the group's heads)."""
    return acc + mm(cv, tl.trans(p_desc.load([prow, n0])).to(cv.dtype))


@triton.jit
def _tma_finish_head(acc, xm_desc, d_ptr, y_ptr, pid_b, row, h, p0, P, pm, ps, L, sy_b, sy_l, sy_h, sy_p,
                     BM: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr):
    if HAS_D:
        xm = xm_desc.load([pid_b, row, h * P + p0]).reshape(BM, BN)
        acc += xm.to(tl.float32) * tl.load(d_ptr + h).to(tl.float32)
    tl.store(y_ptr + pid_b * sy_b + h * sy_h + pm[:, None] * sy_l + ps[None, :] * sy_p,
             acc.to(y_ptr.dtype.element_ty), mask=(pm < L)[:, None] & (ps < P)[None, :])


@triton.jit
def _chunk_scan_tma_kernel(x_desc, xm_desc, c_desc, cb_desc, p_desc, dt_ptr, cs_ptr, d_ptr, y_ptr,
                           L, H, P, N, HPG, NC, G, sy_b, sy_l, sy_h, sy_p,
                           CHUNK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                           BKN: tl.constexpr, PREV: tl.constexpr, HAS_D: tl.constexpr,
                           EXP2: tl.constexpr, LS: tl.constexpr, PS: tl.constexpr, HB: tl.constexpr):
    # The plain kernel with its tiles fetched by the tensor-memory accelerator: x, C, the C·Bᵀ
    # tiles and the entering states through descriptors (2-D/3-D views, zero-filled past the
    # sequence's end), so the key loop keeps LS blocks in flight without the registers and
    # address arithmetic of pointer loads. HB (1 or 2) heads of a group per program share the
    # C·Bᵀ and C tiles and the loop's pipeline bookkeeping. Same math and rounding as the plain
    # kernel.
    pid_b, c, h0, gi, pid_m, p0, ms, ps, cs_base = _program_block(H, P, HPG, NC, CHUNK, BM, BN, HB)
    pm = c * CHUNK + ms
    hs = NC * CHUNK  # dt/cs offset between consecutive heads
    cs_m0 = tl.load(cs_ptr + cs_base + ms)
    cs_m1 = cs_m0
    if HB > 1:
        cs_m1 = tl.load(cs_ptr + cs_base + hs + ms)
    acc0 = tl.zeros((BM, BN), dtype=tl.float32)
    acc1 = tl.zeros((BM, BN), dtype=tl.float32)
    if PREV != 0:  # inter-chunk part: exp(cs_i) · C_i · H_{c−1}ᵀ
        if PREV == 1:  # entering states viewed (b·nc·h·p, n)
            prow = ((pid_b * NC + c) * H + h0) * P + p0
            live = True
        else:  # the initial state (b·h·p, n), first chunk only
            prow = (pid_b * H + h0) * P + p0
            live = c == 0
        if live:  # PS: state-dim blocks in flight (LS where there are several, else one)
            for n0 in tl.range(0, N, BKN, num_stages=PS):
                cv = c_desc.load([pid_b, c * CHUNK + pid_m * BM, gi * N + n0]).reshape(BM, BKN)
                acc0 = _tma_prev_head(acc0, cv, p_desc, prow, n0)
                if HB > 1:
                    acc1 = _tma_prev_head(acc1, cv, p_desc, prow + P, n0)
            acc0 = _decay_rows(acc0, cs_m0, EXP2)
            if HB > 1:
                acc1 = _decay_rows(acc1, cs_m1, EXP2)
    kmax = tl.minimum((pid_m + 1) * BM, tl.minimum(CHUNK, L - c * CHUNK))
    cb_row = ((pid_b * NC + c) * G + gi) * CHUNK + pid_m * BM  # C·Bᵀ viewed (b·nc·g·Q, Q)
    for k0 in tl.range(0, kmax, BK, num_stages=LS):
        ks = k0 + tl.arange(0, BK)
        cb = cb_desc.load([cb_row, k0])
        xv = x_desc.load([pid_b, c * CHUNK + k0, h0 * P + p0]).reshape(BK, BN)
        acc0 = _intra_block(acc0, cb, cs_m0, cs_ptr + cs_base, dt_ptr + cs_base, xv, ks, EXP2)
        if HB > 1:
            xv = x_desc.load([pid_b, c * CHUNK + k0, (h0 + 1) * P + p0]).reshape(BK, BN)
            acc1 = _intra_block(acc1, cb, cs_m1, cs_ptr + cs_base + hs, dt_ptr + cs_base + hs, xv, ks, EXP2)
    row = c * CHUNK + pid_m * BM
    _tma_finish_head(acc0, xm_desc, d_ptr, y_ptr, pid_b, row, h0, p0, P, pm, ps, L, sy_b, sy_l, sy_h, sy_p,
                     BM, BN, HAS_D)
    if HB > 1:
        _tma_finish_head(acc1, xm_desc, d_ptr, y_ptr, pid_b, row, h0 + 1, p0, P, pm, ps, L, sy_b, sy_l, sy_h,
                         sy_p, BM, BN, HAS_D)


# Fixed tiles (capped by the problem's dims) for short chunks / explicit cfg; tuned otherwise.
# HB: heads per program (see the kernel); BKN: state-dim block of the inter-chunk product (a
# smaller one frees registers: sm_90 builds of 4-warp / multi-head tiles spill at BKN=128).
# The timed pick keeps the plain tiles wherever these are slower. One-stage tiles (no prefetch,
# the least shared memory) measured fastest on the H200 at 4k and 16k tokens (`benchmarks/ssd.py
# --sweep`: 159 / 609 µs against 187 / 706 for the best two-stage tile; 155 / 591 with BKN=64).
SCAN_CFG = dict(BM=64, BN=64, BK=64, num_warps=4, num_stages=2, HB=1, BKN=128)
SCAN_CANDIDATES = [dict(BM=bm, BN=64, BK=bk, num_warps=w, num_stages=s, HB=hb, BKN=bkn)
                   for bm, bk, w, s, hb, bkn in (
                       (64, 64, 4, 2, 1, 128), (64, 64, 4, 3, 1, 128), (128, 64, 8, 2, 1, 128),
                       (128, 64, 4, 2, 1, 128), (64, 32, 4, 3, 1, 128), (128, 32, 8, 3, 1, 128),
                       (64, 64, 8, 3, 1, 128),
                       (64, 64, 4, 2, 1, 32), (64, 64, 8, 2, 1, 32), (128, 64, 8, 2, 1, 32),
                       (64, 64, 8, 2, 2, 128), (64, 64, 8, 2, 2, 32), (64, 64, 8, 3, 2, 32),
                       (128, 32, 8, 2, 2, 32), (128, 64, 8, 2, 2, 32),
                       (64, 32, 8, 2, 4, 32), (64, 64, 8, 2, 4, 32),
                       (64, 64, 4, 1, 1, 128), (64, 32, 4, 1, 1, 128), (64, 32, 4, 1, 1, 64))]


# TMA tiles (the plain kernel fed by descriptors), timed with the pointer tiles where
# ssd_common.use_tma says so. On the H200 the 128-wide state block with three key blocks in
# flight measured 138 / 548 µs at 4k / 16k tokens against 153 / 590 for the best pointer tile.
# Two heads per program (HB=2) tie at batch 1 and cut 8 × 16k from 5.0 to 3.8 ms, where C·Bᵀ no
# longer fits in L2. With 32-wide state blocks the inter-chunk product keeps LS of them in flight:
# 1-2 % faster than one 128-wide block. No register cap: the first tile capped at 96 registers
# (the same Triton IR, another ptxas build) gave outputs that changed from run to run at 8 × 16k
# with bf16 C·Bᵀ (10 of 10 runs; 1 of 10 at 4k), where every tile here matches the pointer kernel
# bit for bit.
TMA_CANDIDATES = [dict(BM=64, BN=64, BK=32, num_warps=4, num_stages=1, HB=hb, BKN=bkn, TMA=True, LS=ls)
                  for hb, bkn, ls in ((1, 128, 3), (1, 128, 4), (1, 64, 3), (2, 128, 3), (2, 32, 3))]


def heads_per_program(hb: int, heads_per_group: int) -> int:
    """The largest power of two <= hb dividing the group's head count (programs stay in a group)."""
    return math.gcd(hb, heads_per_group)


def states_rows_ok(prev, prev_mode) -> bool:
    """Whether a descriptor can read the entering (or initial) states as rows of n; the inputs'
    views are use_tma's check."""
    return prev_mode == PREV_NONE or (prev.is_contiguous() and rows_aligned(prev, (prev.shape[-1],)))


def chunk_scan(pr: Prepared, cb, dt_proc, cs, prev, prev_mode, *, exp2=False, cfg=None):
    """y (b, l, h, p) in x's dtype. prev: entering states (b, nc, h, p, n) for PREV_PER_CHUNK,
    the initial state (b, h, p, n) for PREV_FIRST_CHUNK, ignored for PREV_NONE."""
    y = torch.empty(pr.b, pr.l, pr.h, pr.p, dtype=pr.x.dtype, device=pr.x.device)
    tuned = use_tuned(pr, cfg)
    fixed = None if tuned else {**SCAN_CFG, **(cfg or {})}
    tma = use_tma(pr, fixed) and states_rows_ok(prev, prev_mode)
    tma_states = prev if prev_mode != PREV_NONE else cb  # the descriptor is unused without states
    if prev_mode == PREV_PER_CHUNK:
        sp = prev.stride()
    elif prev_mode == PREV_FIRST_CHUNK:
        sp = (prev.stride(0), 0, *prev.stride()[1:])
    else:
        prev, sp = y, (0,) * 5
    d = pr.D if pr.D is not None else pr.A
    args = (pr.x, pr.C, cb, dt_proc, cs, prev, d, y,
            pr.l, pr.h, pr.p, pr.n, pr.h // pr.g, pr.nchunks,
            *pr.x.stride(), *pr.C.stride(), *cb.stride(), *sp, *y.stride())
    common = dict(CHUNK=pr.chunk, PREV=prev_mode, HAS_D=pr.D is not None, EXP2=exp2)

    def launch(c):
        BM, BK, BN = min(c["BM"], pr.chunk), min(c["BK"], pr.chunk), tile(pr.p, c["BN"])
        tma_tile = c.get("TMA", False) and tma
        HB = heads_per_program(min(c.get("HB", 1), 2) if tma_tile else c.get("HB", 1), pr.h // pr.g)
        BKN = tile(pr.n, c.get("BKN", 128))
        grid = ((pr.chunk // BM) * cdiv(pr.p, BN), pr.h // HB, pr.b * pr.nchunks)
        opts = launch_opts(c["num_warps"], c["num_stages"])
        if tma_tile:
            _chunk_scan_tma_kernel[grid](
                packed_rows(pr.x, [1, BK, BN]), packed_rows(pr.x, [1, BM, BN]), packed_rows(pr.C, [1, BM, BKN]),
                contiguous_rows(cb, [BM, BK]), contiguous_rows(tma_states, [BN, BKN]), dt_proc, cs, d, y,
                pr.l, pr.h, pr.p, pr.n, pr.h // pr.g, pr.nchunks, pr.g, *y.stride(),
                BM=BM, BN=BN, BK=BK, BKN=BKN, LS=c["LS"], PS=c["LS"] if BKN < pr.n else 1, HB=HB, **common,
                **opts)
        else:
            _chunk_scan_kernel[grid](*args, BM=BM, BN=BN, BK=BK, BKN=BKN, HB=HB, **common, **opts)

    if tuned:
        key = ("chunk_scan", pr.p, pr.n, pr.chunk, work_bucket(pr.b * pr.nchunks * pr.h), pr.x.dtype,
               prev_mode, exp2, None if prev is None else prev.dtype, cb.dtype, tma)
        launch(pick(key, SCAN_CANDIDATES + TMA_CANDIDATES if tma else SCAN_CANDIDATES, launch, output=lambda: y))
    else:
        launch(fixed)
    return y


def ssd_default(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=True,
                dt_limit=(0.0, float("inf")), initial_state=None):
    """The standard pipeline: cumsum; C·Bᵀ, chunk states and state passing; chunk scan.

    The middle stages run as one sequential-over-chunks launch or as separate launches,
    whichever is faster for the dims (see ssd_chunk_state_passing.entering_states). The entering
    states reach the scan in the operand dtype, as in mamba_ssm (`hand_off_dtype`).
    """
    pr = prepare(x, dt, A, B, C, chunk_size, D, dt_bias, initial_state)
    dt_proc, cs = chunk_cumsum(pr, dt_softplus, dt_limit)
    cb = cb_scratch(pr)
    prev, final = entering_states(pr, dt_proc, cs, cb, out_dtype=hand_off_dtype(pr))
    y = chunk_scan(pr, cb, dt_proc, cs, prev, PREV_PER_CHUNK)
    return y.to(pr.out_dtype), final
