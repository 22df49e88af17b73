"""backend="torch": every strategy's PyTorch definition, for serving a model on a CPU.

Exact strategies are the reference scan; `independent` is the reference scan run separately on
each chunk (checked here against slices scanned one by one), in prefill and in decode."""
import pytest
import torch

import bamba
from bamba.kernels.ssd_reference import ssd_reference
from bamba.tiny import tiny_model, tiny_tokenizer


SCAN = ("x", "dt", "A", "B", "C")


def inputs(kit, b=2, l=45):
    return kit.make(b, l, 4, 8, 2, 8, dtype=torch.float64, with_init=True)


def sliced(inp, start, stop):
    """The scan inputs of positions start..stop-1 (A has no sequence axis)."""
    return {k: inp[k] if k == "A" else inp[k][:, start:stop] for k in SCAN}


@pytest.mark.parametrize("strategy", ["default", "optimized", "reference"])
def test_exact_strategies_are_the_reference_scan(kit, strategy):
    inp = inputs(kit)
    y, state = bamba.ssd(**inp, chunk_size=16, strategy=strategy, backend="torch")
    y_ref, state_ref = ssd_reference(*(inp[k] for k in SCAN), 16, inp["D"], inp["dt_bias"],
                                     initial_state=inp["initial_state"])
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(state, state_ref, rtol=0, atol=0)


def test_independent_scans_every_chunk_on_its_own(kit):
    inp = inputs(kit, l=45)  # chunks of 16, 16 and 13 tokens
    y, state = bamba.ssd(**inp, chunk_size=16, strategy="independent", backend="torch")
    ys = []
    for s in range(0, 45, 16):
        init = inp["initial_state"] if s == 0 else None
        y_c, state_c = ssd_reference(*sliced(inp, s, s + 16).values(), 16, inp["D"], inp["dt_bias"],
                                     initial_state=init)
        ys.append(y_c)
    torch.testing.assert_close(y, torch.cat(ys, dim=1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, state_c, rtol=1e-12, atol=1e-12)
    exact, _ = bamba.ssd(**inp, chunk_size=16, strategy="default", backend="torch")
    assert torch.equal(y[:, :16], exact[:, :16]) and not torch.allclose(y[:, 16:], exact[:, 16:])


def test_independent_step_resets_at_chunk_starts(kit):
    inp = inputs(kit, b=1, l=20)
    extra = dict(D=inp["D"], dt_bias=inp["dt_bias"], strategy="independent", backend="torch")
    y_full, _ = bamba.ssd(*(inp[k] for k in SCAN), chunk_size=16, **extra)
    _, state = bamba.ssd(**sliced(inp, 0, 15), chunk_size=16, **extra)
    for pos in range(15, 20):  # crosses the boundary at 16
        y = bamba.ssd_step(state, inp["x"][:, pos], inp["dt"][:, pos], inp["A"], inp["B"][:, pos], inp["C"][:, pos],
                           chunk_size=16, position=pos, **extra)
        torch.testing.assert_close(y, y_full[:, pos], rtol=1e-10, atol=1e-10)


def test_unknown_backend(kit):
    with pytest.raises(ValueError, match="backend: expected one of"):
        bamba.ssd(**sliced(inputs(kit), 0, 45), chunk_size=16, backend="cuda")
    with pytest.raises(ValueError, match="backend: expected one of"):
        tiny_model(strategy="reference").set_strategy("default", backend="numpy")


def test_model_on_either_backend_gives_the_same_logits():
    """The kernels (under the interpreter without a GPU) and the PyTorch twins agree in a model."""
    model = tiny_model(strategy="optimized", chunk_size=16, num_layers=2)
    ids = torch.tensor([tiny_tokenizer()("Two chunks of sixteen tokens, and a few more.")["input_ids"]],
                       device=model.device)
    with torch.no_grad():
        triton_logits = model(ids)
        torch_logits = model.set_strategy("optimized", 16, backend="torch")(ids)
    assert model.backend == "torch"
    torch.testing.assert_close(torch_logits, triton_logits, rtol=1e-4, atol=1e-4)
