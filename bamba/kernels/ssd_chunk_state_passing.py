"""Kernels 3 and 4 in one launch: chunk states and state passing, sequential over chunks.

One program per (batch, head, p-block, n-block) walks the chunks in order and carries the running
state H (fp32) in registers: it stores H_{c−1} (the state entering chunk c, what the scan reads),
then decays it and adds S_c = Σ_j exp(cs_last−cs_j)·dt_j·x_j·B_jᵀ as one (BP × Q)·(Q × BN) product.
The fp32 chunk states S_c never go to memory: the split pipeline writes them and reads them back
(2 × 268 MB at 16k tokens, Bamba-9B dims), and state passing is a second sequential launch.
The chunk loop is the innermost loop, so the compiler prefetches chunk c+1's x and B during c.
Options as in ssd_chunk_state: FUSE_DT computes dt and the cumsum here; FUSE_CB also computes the
C·Bᵀ tiles, a few per walking program after its walk.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .ssd_bmm import cb_tile, cb_tiles, chunk_cb
from .ssd_chunk_state import (block_dt, chunk_raw_dt, chunk_state, fused_chunk_dt, head_rate, state_block,
                              state_block_tma)
from .ssd_common import (Prepared, contiguous_rows, launch_opts, packed_rows, pick, rows_aligned, tile, use_tma,
                         use_tuned, work_bucket)
from .ssd_state_passing import state_passing
from .utils import cdiv, decay, kernel_dt_limit


@triton.jit
def _chunk_state_passing_kernel(x_ptr, b_ptr, x_desc, b_desc, prev_desc, dt_ptr, cs_ptr, prev_ptr, init_ptr,
                                final_ptr, dtraw_ptr, A_ptr, bias_ptr, c_ptr, cb_ptr, dt_min, dt_max,
                                L, H, P, N, HPG, NC, C0, NCB,
                                sx_b, sx_l, sx_h, sx_p, sb_b, sb_l, sb_g, sb_n, sr_b, sr_l, sr_h,
                                sc_b, sc_l, sc_g, sc_n, scb_b, scb_c, scb_g, scb_m, scb_k,
                                CHUNK: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                                BK: tl.constexpr, FUSE_DT: tl.constexpr, HAS_BIAS: tl.constexpr,
                                SOFTPLUS: tl.constexpr, EXP2: tl.constexpr, FUSE_CB: tl.constexpr,
                                HAS_INIT: tl.constexpr, STORE_PREV: tl.constexpr,
                                CB_BM: tl.constexpr, CB_BK: tl.constexpr, CB_BN: tl.constexpr,
                                TMA: tl.constexpr, PREV_TMA: tl.constexpr):
    # TMA: x and B tiles through descriptors (state_block_tma) instead of masked pointer loads,
    # and (PREV_TMA) the entering states stored through one; same products in the same order, so
    # the same bits
    pid = tl.program_id(0)
    pid_b = tl.program_id(1)
    npn = tl.cdiv(P, BP) * tl.cdiv(N, BN)
    if pid < H * npn:
        h = pid // npn
        r = pid % npn
        gi = h // HPG
        ps0 = (r // tl.cdiv(N, BN)) * BP
        ns0 = (r % tl.cdiv(N, BN)) * BN
        ps = ps0 + tl.arange(0, BP)
        ns = ns0 + tl.arange(0, BN)
        smask = (ps < P)[:, None] & (ns < N)[None, :]
        # prev (b, nc, h, p, n), init and final (b, h, p, n): contiguous, allocated by the wrapper
        s_off = ps[:, None] * N + ns[None, :]
        bh = (pid_b * H + h) * P * N
        if HAS_INIT:
            state = tl.load(init_ptr + bh + s_off, mask=smask, other=0.0).to(tl.float32)
        else:
            state = tl.zeros((BP, BN), dtype=tl.float32)
        a = head_rate(A_ptr, h, EXP2)
        x_base = x_ptr + pid_b * sx_b + h * sx_h
        b_base = b_ptr + pid_b * sb_b + gi * sb_g
        raw_base = dtraw_ptr + pid_b * sr_b + h * sr_h
        row = (pid_b * H + h) * NC * CHUNK
        # FUSE_DT: chunk c+1's raw dt is loaded during chunk c. These loads are strided (one value
        # per row of h heads) and, issued at their use, left the walk waiting on them every chunk.
        if FUSE_DT:
            raw_next = chunk_raw_dt(raw_base, C0, L, sr_l, CHUNK)
        for c in range(C0, NC):
            if PREV_TMA:  # prev viewed (b·nc·h·p, n); BP divides p, so no row reaches the next head
                prev_desc.store([((pid_b * NC + c) * H + h) * P + ps0, ns0], state.to(prev_ptr.dtype.element_ty))
            elif STORE_PREV:
                tl.store(prev_ptr + ((pid_b * NC + c) * H + h) * P * N + s_off,
                         state.to(prev_ptr.dtype.element_ty), mask=smask)
            cs_base = row + c * CHUNK
            if FUSE_DT:  # one program per head hands dt and cs to the scan kernel
                raw = raw_next
                raw_next = chunk_raw_dt(raw_base, c + 1, L, sr_l, CHUNK)  # none past the end: masked
                d_all, cs_all, cs_last = fused_chunk_dt(raw, bias_ptr, h, a, c, L, dt_ptr, cs_ptr,
                                                        cs_base, r == 0, dt_min, dt_max, HAS_BIAS, SOFTPLUS, CHUNK)
            else:
                cs_last = tl.load(cs_ptr + cs_base + CHUNK - 1)
            prefix = cs_last * 0.0
            kmax = tl.minimum(CHUNK, L - c * CHUNK)
            # H_c = exp(cs_last)·H_{c−1} + S_c, the chunk's product accumulating onto the decayed state
            state = decay(cs_last, EXP2) * state
            for k0 in tl.static_range(0, CHUNK, BK):  # one step for Q <= BK: no inner loop
                t = k0 + tl.arange(0, BK)
                pos = c * CHUNK + t
                valid = t < kmax
                if FUSE_DT and BK == CHUNK:  # the whole chunk is one block: already computed
                    d_k = d_all
                    cs_k = cs_all
                else:
                    d_k, cs_k, prefix = block_dt(dt_ptr, cs_ptr, cs_base, t, valid, raw_base, bias_ptr, h, a, pos,
                                                 L, sr_l, prefix, dt_min, dt_max, FUSE_DT, HAS_BIAS, SOFTPLUS)
                if TMA:
                    state = state_block_tma(state, x_desc, b_desc, pid_b, c * CHUNK + k0, h * P + ps0, gi * N + ns0,
                                            d_k, cs_k, cs_last, BK, BP, BN, EXP2)
                else:
                    state = state_block(state, x_base, b_base, pos, valid, ps, ns, d_k, cs_k, cs_last, P, N,
                                        sx_l, sx_p, sb_l, sb_n, EXP2)
        tl.store(final_ptr + bh + s_off, state, mask=smask)
        if FUSE_CB:
            # C·Bᵀ tiles (independent of the state) spread evenly over the walking programs, a few
            # each after their walk: the walk leaves most issue slots idle, while programs of
            # their own found every SM slot taken by walkers and ran after them
            nk = CHUNK // CB_BK
            ncb = (CHUNK // CB_BM) * nk
            for q in range(pid, NCB, H * npn):  # q: (group, chunk, tile) of batch element pid_b
                t = q % ncb
                cb_tile(c_ptr, b_ptr, cb_ptr, pid_b, (q // ncb) % NC, q // (NC * ncb), t // nk, t % nk, L, N,
                        sc_b, sc_l, sc_g, sc_n, sb_b, sb_l, sb_g, sb_n,
                        scb_b, scb_c, scb_g, scb_m, scb_k, CHUNK, CB_BM, CB_BK, CB_BN)
    else:
        if FUSE_DT:  # dt and cs of the chunks before C0, which no state program walks
            q = pid - H * npn
            h = q // C0
            c = q % C0
            fused_chunk_dt(chunk_raw_dt(dtraw_ptr + pid_b * sr_b + h * sr_h, c, L, sr_l, CHUNK), bias_ptr, h,
                           head_rate(A_ptr, h, EXP2), c, L, dt_ptr, cs_ptr, ((pid_b * H + h) * NC + c) * CHUNK,
                           True, dt_min, dt_max, HAS_BIAS, SOFTPLUS, CHUNK)


# Fixed tiles for short chunks / explicit cfg; tuned otherwise. Small p/n blocks: the grid has
# only b·h·(p/BP)·(n/BN) sequential programs, and the SMs need several each.
SEQ_CFG = dict(BP=32, BN=64, num_warps=4, num_stages=2)
SEQ_CANDIDATES = [dict(BP=bp, BN=bn, num_warps=w, num_stages=s)
                  for bp, bn, w, s in ((32, 64, 4, 2), (16, 64, 4, 2), (64, 64, 4, 2), (32, 128, 8, 2),
                                       (64, 64, 4, 1), (32, 64, 4, 1))]
# TMA tiles, timed with the others where ssd_common.use_tma says so. On the H200 the two-stage one
# took the `optimized` walk from 68 to 62 µs at 4k tokens, 240 to 213 at 16k and 1.91 to 1.58 ms
# at 8 × 16k (32-wide n blocks, three stages and 8-warp 64 × 128 blocks were slower); storing the
# entering states through a descriptor too, to 60, 197 and 1.46 ms.
SEQ_TMA_CANDIDATES = [dict(BP=64, BN=64, num_warps=4, num_stages=s, TMA=True) for s in (2, 1)]


def chunk_state_passing(pr: Prepared, dt_proc, cs, cb=None, *, dt=None, out_dtype=torch.float32,
                        exp2=False, last_only=False, cfg=None):
    """Entering states (b, nc, h, p, n) in out_dtype and the final state (b, h, p, n) fp32.

    dt=(dt_softplus, dt_limit): dt_proc/cs are written here, not read. cb: also fill the C·Bᵀ tiles.
    last_only (chunk-local `independent`): no entering states (None); the final state is the last
    chunk's own, from the initial state only when that chunk is the first.
    """
    dev = pr.x.device
    final = torch.empty(pr.b, pr.h, pr.p, pr.n, dtype=torch.float32, device=dev)
    prev = None if last_only else torch.empty(pr.b, pr.nchunks, pr.h, pr.p, pr.n, dtype=out_dtype, device=dev)
    c0 = pr.nchunks - 1 if last_only else 0
    softplus, dt_limit = dt if dt is not None else (True, (0.0, float("inf")))
    if cb is not None:
        CB_BM, CB_BK, CB_BN = cb_tiles(pr)
        ncb = pr.g * pr.nchunks * (pr.chunk // CB_BM) * (pr.chunk // CB_BK)
        cb_strides = cb.stride()
    else:
        cb = final
        CB_BM = CB_BK = CB_BN = 16
        ncb = 0
        cb_strides = (0,) * 5
    ndt = pr.h * c0 if dt is not None else 0
    init = pr.initial_state if c0 == 0 else None
    args = (dt_proc, cs, final if prev is None else prev, init if init is not None else final,
            final, pr.dt, pr.A,
            pr.dt_bias if pr.dt_bias is not None else pr.A, pr.C, cb, *kernel_dt_limit(dt_limit),
            pr.l, pr.h, pr.p, pr.n, pr.h // pr.g, pr.nchunks, c0, ncb,
            *pr.x.stride(), *pr.B.stride(), *pr.dt.stride(), *pr.C.stride(), *cb_strides)
    common = dict(CHUNK=pr.chunk, FUSE_DT=dt is not None,
                  HAS_BIAS=pr.dt_bias is not None, SOFTPLUS=softplus, EXP2=exp2,
                  FUSE_CB=ncb > 0, HAS_INIT=init is not None, STORE_PREV=prev is not None,
                  CB_BM=CB_BM, CB_BK=CB_BK, CB_BN=CB_BN)

    tuned = use_tuned(pr, cfg)
    fixed = None if tuned else {**SEQ_CFG, **(cfg or {})}
    tma = use_tma(pr, fixed)
    BK = min(pr.chunk, 256)

    def launch(c):
        BP, BN = tile(pr.p, c["BP"]), tile(pr.n, c["BN"])
        npn = cdiv(pr.p, BP) * cdiv(pr.n, BN)
        tma_tile = c.get("TMA", False) and tma
        tiles = (packed_rows(pr.x, [1, BK, BP]), packed_rows(pr.B, [1, BK, BN])) if tma_tile else (pr.x, pr.B)
        prev_tma = tma_tile and prev is not None and pr.p % BP == 0 and rows_aligned(prev, (pr.n,))
        prev_rows = contiguous_rows(prev, [BP, BN]) if prev_tma else pr.x
        _chunk_state_passing_kernel[(pr.h * npn + ndt, pr.b)](
            pr.x, pr.B, *tiles, prev_rows, *args, BP=BP, BN=BN, BK=BK, TMA=tma_tile, PREV_TMA=prev_tma, **common,
            **launch_opts(c["num_warps"], c["num_stages"]))

    if tuned:
        key = ("chunk_state_passing", pr.p, pr.n, pr.chunk, pr.b, work_bucket(pr.nchunks),
               pr.x.dtype, out_dtype, dt is not None, ncb > 0, exp2, last_only, tma)
        # tiles of one shape compute the same products in the same order, by descriptors or not,
        # so a descriptor-fed tile must reproduce its pointer twin's states bit for bit
        launch(pick(key, SEQ_CANDIDATES + SEQ_TMA_CANDIDATES if tma else SEQ_CANDIDATES, launch,
                    output=lambda: final if prev is None else (prev, final),
                    same_bits=lambda c: tuple(sorted((k, v) for k, v in c.items() if k != "TMA"))))
    else:
        launch(fixed)
    return prev, final


# "seq": the launch above. "split": chunk_state, then state_passing (many more parallel programs,
# but the chunk states round-trip through memory). Which is faster depends on b·h·length and the
# GPU, so the first call for given dims times both; the interpreter runs the first.
PLANS = ("seq", "split")


def entering_states(pr: Prepared, dt_proc, cs, cb, *, dt=None, out_dtype=torch.float32, exp2=False):
    """(entering states, final state) by the faster plan; cb (b, nc, g, Q, Q) is filled on the way.

    dt=(dt_softplus, dt_limit): dt_proc and cs are computed here; otherwise they are inputs.
    """
    def run(plan):
        if plan == "seq":
            return chunk_state_passing(pr, dt_proc, cs, cb, dt=dt, out_dtype=out_dtype, exp2=exp2)
        if dt is None:
            chunk_cb(pr, out=cb)
            states = chunk_state(pr, dt_proc, cs, exp2=exp2)
        else:
            states = chunk_state(pr, dt_proc, cs, fused=(*dt, cb), exp2=exp2)
        # fp32 entering states overwrite the chunk states in place (no extra buffer)
        return state_passing(pr, states, cs, exp2=exp2,
                             out_dtype=None if out_dtype == torch.float32 else out_dtype)

    if use_tuned(pr, None) and len(PLANS) > 1:
        key = ("entering_states", pr.p, pr.n, pr.chunk, pr.b, work_bucket(pr.nchunks), pr.h,
               pr.x.dtype, out_dtype, dt is not None, exp2)
        return run(pick(key, PLANS, run))
    return run(PLANS[0])
