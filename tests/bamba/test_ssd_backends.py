"""backend="torch": every strategy's PyTorch definition, for serving a model on a CPU.

Exact strategies are the reference scan; `independent` is the reference scan run separately on
each chunk (checked here against slices scanned one by one), in prefill and in decode."""
import pytest
import torch

import bamba
from bamba.kernels.ssd_reference import ssd_reference
from bamba.tiny import tiny_model, tiny_tokenizer


def inputs(b=2, l=45, h=4, p=8, g=2, n=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    return dict(x=r(b, l, h, p), dt=r(b, l, h), A=-torch.rand(h, generator=gen, dtype=torch.float64) - 0.1,
                B=r(b, l, g, n), C=r(b, l, g, n)), dict(D=r(h), dt_bias=r(h), initial_state=r(b, h, p, n))


@pytest.mark.parametrize("strategy", ["default", "optimized", "reference"])
def test_exact_strategies_are_the_reference_scan(strategy):
    t, extra = inputs()
    y, state = bamba.ssd(**t, **extra, chunk_size=16, strategy=strategy, backend="torch")
    y_ref, state_ref = ssd_reference(*t.values(), 16, extra["D"], extra["dt_bias"], initial_state=extra["initial_state"])
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(state, state_ref, rtol=0, atol=0)


def test_independent_scans_every_chunk_on_its_own():
    t, extra = inputs(l=45)  # chunks of 16, 16 and 13 tokens
    y, state = bamba.ssd(**t, **extra, chunk_size=16, strategy="independent", backend="torch")
    ys = []
    for s in range(0, 45, 16):
        part = {k: v[:, s:s + 16] if k != "A" else v for k, v in t.items()}
        init = extra["initial_state"] if s == 0 else None
        y_c, state_c = ssd_reference(*part.values(), 16, extra["D"], extra["dt_bias"], initial_state=init)
        ys.append(y_c)
    torch.testing.assert_close(y, torch.cat(ys, dim=1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, state_c, rtol=1e-12, atol=1e-12)
    exact, _ = bamba.ssd(**t, **extra, chunk_size=16, strategy="default", backend="torch")
    assert torch.equal(y[:, :16], exact[:, :16]) and not torch.allclose(y[:, 16:], exact[:, 16:])


def test_independent_step_resets_at_chunk_starts():
    t, extra = inputs(b=1, l=20)
    y_full, _ = bamba.ssd(**t, D=extra["D"], dt_bias=extra["dt_bias"], chunk_size=16, strategy="independent",
                          backend="torch")
    _, state = bamba.ssd(**{k: v[:, :15] if k != "A" else v for k, v in t.items()}, D=extra["D"],
                         dt_bias=extra["dt_bias"], chunk_size=16, strategy="independent", backend="torch")
    for pos in range(15, 20):  # crosses the boundary at 16
        y = bamba.ssd_step(state, t["x"][:, pos], t["dt"][:, pos], t["A"], t["B"][:, pos], t["C"][:, pos],
                           D=extra["D"], dt_bias=extra["dt_bias"], strategy="independent", chunk_size=16,
                           position=pos, backend="torch")
        torch.testing.assert_close(y, y_full[:, pos], rtol=1e-10, atol=1e-10)


def test_unknown_backend():
    t, _ = inputs()
    with pytest.raises(ValueError, match="backend: expected one of"):
        bamba.ssd(**t, chunk_size=16, backend="cuda")
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
