"""One-token ssd_step: agrees with the scan (prefill of L then k steps == prefill of L+k)."""
import pytest
import torch

import bamba
from bamba.kernels.ssd_reference import ssd_step_reference

SEQ = ("x", "dt", "B", "C")


def _slice(inp, s, e):
    return {k: (v[:, s:e] if k in SEQ else v) for k, v in inp.items()}


@pytest.mark.parametrize("strategy", bamba.STRATEGIES)
@pytest.mark.parametrize("L,k", [(14, 4), (16, 2), (1, 3)])
def test_prefill_then_steps_equals_longer_prefill(kit, strategy, L, k):
    Q = 16
    inp = kit.make(2, L + k, 4, 16, 2, 16, with_init=True)
    y_full, s_full = bamba.ssd(**inp, chunk_size=Q, strategy=strategy)
    y_pre, state = bamba.ssd(**_slice(inp, 0, L), chunk_size=Q, strategy=strategy)
    kit.close(y_pre, y_full[:, :L])
    for i in range(k):
        t = L + i
        y_t = bamba.ssd_step(state, inp["x"][:, t], inp["dt"][:, t], inp["A"], inp["B"][:, t],
                             inp["C"][:, t], D=inp["D"], dt_bias=inp["dt_bias"], strategy=strategy,
                             chunk_size=Q, position=t)
        kit.close(y_t, y_full[:, t])
    kit.close(state, s_full)


@pytest.mark.parametrize("strategy", [s for s in bamba.STRATEGIES if s != "reference"])
def test_step_matches_reference_step(kit, strategy):
    b, h, p, g, n = 3, 4, 24, 2, 20
    gen = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=gen).to(kit.device)  # noqa: E731
    state = r(b, h, p, n)
    ref_state = state.double().clone()
    x, dt, B, C = r(b, h, p), r(b, h), r(b, g, n), r(b, g, n)
    A, D, bias = -torch.rand(h, generator=gen).to(kit.device) - 0.1, r(h), r(h)
    pos = torch.tensor([5, 16, 32], device=kit.device)
    y = bamba.ssd_step(state, x, dt, A, B, C, D=D, dt_bias=bias, strategy=strategy,
                       chunk_size=16, position=pos)
    reset = (pos % 16 == 0) if strategy == "independent" else None
    y_ref = ssd_step_reference(ref_state, x.double(), dt.double(), A.double(), B.double(), C.double(),
                               D.double(), bias.double(), reset=reset)
    kit.close(y, y_ref)
    kit.close(state, ref_state)


def test_independent_per_sequence_positions(kit):
    """Batched decode with left padding: each sequence resets at its own chunk boundary."""
    b, h, p, g, n = 2, 4, 16, 1, 16
    inp = kit.make(b, 1, h, p, g, n)
    base = torch.randn(b, h, p, n, device=kit.device)
    args = lambda t: (inp["x"][:, 0], inp["dt"][:, 0], inp["A"], inp["B"][:, 0], inp["C"][:, 0])  # noqa: E731
    s_vec = base.clone()
    y_vec = bamba.ssd_step(s_vec, *args(0), strategy="independent", chunk_size=16,
                           position=torch.tensor([16, 7], device=kit.device))
    for i, pos in enumerate((16, 7)):
        s_one = base.clone()
        y_one = bamba.ssd_step(s_one, *args(0), strategy="independent", chunk_size=16, position=pos)
        kit.close(y_vec[i], y_one[i])
        kit.close(s_vec[i], s_one[i])
