"""Kernel 2 of the chunked scan: per chunk and group, the C·Bᵀ block (Q×Q, zero above the diagonal)."""
from __future__ import annotations

import triton
import triton.language as tl

from .ssd_common import Prepared, cb_scratch, launch_opts, tile
from .utils import mm


@triton.jit
def cb_tile(c_ptr, b_ptr, cb_ptr, pid_b, c, gi, pid_m, pid_k, L, N,
            sc_b, sc_l, sc_g, sc_n, sb_b, sb_l, sb_g, sb_n,
            scb_b, scb_c, scb_g, scb_m, scb_k,
            CHUNK: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    """One (BM × BK) tile of C_i·B_jᵀ for chunk c, zero above the diagonal (so the chunk scan
    needs no causal mask; tiles wholly above it are only zero-filled)."""
    ms = pid_m * BM + tl.arange(0, BM)
    ks = pid_k * BK + tl.arange(0, BK)
    acc = tl.zeros((BM, BK), dtype=tl.float32)
    if pid_k * BK < (pid_m + 1) * BM:
        pm = c * CHUNK + ms
        pk = c * CHUNK + ks
        for n0 in range(0, N, BN):
            nn = n0 + tl.arange(0, BN)
            cv = tl.load(c_ptr + pid_b * sc_b + gi * sc_g + pm[:, None] * sc_l + nn[None, :] * sc_n,
                         mask=(pm < L)[:, None] & (nn < N)[None, :], other=0.0)
            bv = tl.load(b_ptr + pid_b * sb_b + gi * sb_g + pk[None, :] * sb_l + nn[:, None] * sb_n,
                         mask=(pk < L)[None, :] & (nn < N)[:, None], other=0.0)
            acc += mm(cv, bv)
        acc = tl.where(ms[:, None] >= ks[None, :], acc, 0.0)
    tl.store(cb_ptr + pid_b * scb_b + c * scb_c + gi * scb_g + ms[:, None] * scb_m + ks[None, :] * scb_k,
             acc.to(cb_ptr.dtype.element_ty), mask=(ms < CHUNK)[:, None] & (ks < CHUNK)[None, :])


@triton.jit
def _bmm_kernel(c_ptr, b_ptr, cb_ptr, L, N, NC,
                sc_b, sc_l, sc_g, sc_n, sb_b, sb_l, sb_g, sb_n,
                scb_b, scb_c, scb_g, scb_m, scb_k,
                CHUNK: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0)
    nk = CHUNK // BK
    pid_bc = tl.program_id(1)
    cb_tile(c_ptr, b_ptr, cb_ptr, pid_bc // NC, pid_bc % NC, tl.program_id(2), pid // nk, pid % nk,
            L, N, sc_b, sc_l, sc_g, sc_n, sb_b, sb_l, sb_g, sb_n, scb_b, scb_c, scb_g, scb_m, scb_k,
            CHUNK, BM, BK, BN)


def cb_tiles(pr: Prepared):
    """Tile sizes of the C·Bᵀ kernel: (BM, BK, BN)."""
    t = min(64, pr.chunk)
    return t, t, tile(pr.n, 64)


def chunk_cb(pr: Prepared, out=None):
    """C·Bᵀ per chunk: (b, nchunks, g, Q, Q) in cb_scratch's dtype, zero above the diagonal."""
    cb = out if out is not None else cb_scratch(pr)
    BM, BK, BN = cb_tiles(pr)
    grid = ((pr.chunk // BM) * (pr.chunk // BK), pr.b * pr.nchunks, pr.g)
    _bmm_kernel[grid](pr.C, pr.B, cb, pr.l, pr.n, pr.nchunks, *pr.C.stride(), *pr.B.stride(),
                      *cb.stride(), CHUNK=pr.chunk, BM=BM, BK=BK, BN=BN, **launch_opts(4, 2))
    return cb
