"""`independent`: chunk-local scan. Every chunk starts from zero state (the first one from
``initial_state`` when given), so there is no state passing and all chunks run in parallel.
Causal: y_t depends only on inputs at or before t. Not exact by design.
"""
from __future__ import annotations

from .ssd_bmm import chunk_cb
from .ssd_chunk_cumsum import chunk_cumsum
from .ssd_chunk_scan import PREV_FIRST_CHUNK, PREV_NONE, chunk_scan
from .ssd_chunk_state import chunk_state
from .ssd_common import prepare
from .ssd_state_passing import state_passing


def ssd_independent(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=True,
                    dt_limit=(0.0, float("inf")), initial_state=None):
    pr = prepare(x, dt, A, B, C, chunk_size, D, dt_bias, initial_state)
    dt_proc, cs = chunk_cumsum(pr, dt_softplus, dt_limit)
    cb = chunk_cb(pr)
    mode = PREV_NONE if pr.initial_state is None else PREV_FIRST_CHUNK
    y = chunk_scan(pr, cb, dt_proc, cs, pr.initial_state, mode)
    # Final state = state at the end of the last (possibly partial) chunk, from its own start;
    # decode continues from it and resets at the next chunk boundary.
    last = chunk_state(pr, dt_proc, cs, first_chunk=pr.nchunks - 1, nchunks=1)
    if pr.initial_state is not None and pr.nchunks == 1:
        _, final = state_passing(pr, last, cs[:, :, -1:])
    else:
        final = last[:, 0]
    return y.to(pr.out_dtype), final
