"""`independent`: chunk-local scan. Every chunk starts from zero state (the first one from
``initial_state`` when given), so there is no state passing and all chunks run in parallel.
Causal: y_t depends only on inputs at or before t. Not exact by design.

Two launches: dt, cumsum and C·Bᵀ tiles together with the last chunk's own state (the final
state, from which decode continues and resets at the next chunk boundary); chunk scan (exp2).
"""
from __future__ import annotations

from .ssd_chunk_scan import PREV_FIRST_CHUNK, PREV_NONE, chunk_scan
from .ssd_chunk_state_passing import chunk_state_passing
from .ssd_common import fused_scratch, prepare


def ssd_independent(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=True,
                    dt_limit=(0.0, float("inf")), initial_state=None):
    pr = prepare(x, dt, A, B, C, chunk_size, D, dt_bias, initial_state)
    dt_proc, cs, cb = fused_scratch(pr)
    _, final = chunk_state_passing(pr, dt_proc, cs, cb, dt=(dt_softplus, dt_limit), exp2=True,
                                   last_only=True)
    mode = PREV_NONE if pr.initial_state is None else PREV_FIRST_CHUNK
    y = chunk_scan(pr, cb, dt_proc, cs, pr.initial_state, mode, exp2=True)
    return y.to(pr.out_dtype), final
