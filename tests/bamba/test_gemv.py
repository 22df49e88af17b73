"""The one-row projection kernel against a float64 product and against nn.Linear (CPU: Triton
interpreter)."""
import pytest
import torch

from bamba.kernels.gemv import NormedRow, gemv, gemv_swiglu
from bamba.kernels.rms_norm import add_rms_norm, rms_norm, rms_norm_gated, silu_mul
from bamba.modeling_bamba import BambaLinear
from kernel_checks import EPS, norm64, rand


@pytest.mark.parametrize("static_weight", [False, True], ids=["weight_after_wait", "weight_before_wait"])
@pytest.mark.parametrize("n, k", [(40, 48), (17, 3000), (1, 16)], ids=["40x48", "17x3000_three_steps", "1x16"])
def test_gemv_matches_float64(device, n, k, static_weight):
    """Row counts not a multiple of the 16-row tile, K not a multiple of the step; with a static
    weight the first block is summed before the loop over the rest."""
    w, x = rand(device, n, k), rand(device, 1, 1, k, seed=1)
    y = gemv(x, w, static_weight=static_weight)
    assert y.shape == (1, 1, n) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), x.double() @ w.double().T, rtol=1e-5, atol=1e-4)


def test_gemv_bf16_strided_weight(device):
    """bf16 operands, fp32 sums, one rounding to bf16; a weight whose rows are a view into wider ones."""
    wide = rand(device, 24, 2 * 80, dtype=torch.bfloat16)
    w, x = wide[:, 80:], rand(device, 80, dtype=torch.bfloat16, seed=2)
    want = (x.double() @ w.double().T).to(torch.bfloat16)
    got = gemv(x, w)
    assert got.dtype == torch.bfloat16 and got.shape == (24,)
    torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=1e-2)


def test_gemv_rejects_more_than_one_row(device):
    with pytest.raises(ValueError, match="one row of 8 features"):
        gemv(rand(device, 2, 8), rand(device, 4, 8))


def test_linear_takes_the_kernel_only_for_one_row_without_bias(device, monkeypatch):
    """The switch: on CUDA at inference with the "triton" backend, one row and no bias; the
    module's result either way is nn.Linear's."""
    import bamba.modeling_bamba as m

    calls = []
    monkeypatch.setattr(m, "gemv", lambda x, w, **kw: calls.append(x.shape) or gemv(x, w, **kw))
    monkeypatch.setattr(m, "_one_launch", lambda x, backend: backend == "triton")
    plain, biased = BambaLinear(32, 24, bias=False).to(device), BambaLinear(32, 24).to(device)
    one, two = rand(device, 1, 1, 32, seed=3), rand(device, 2, 1, 32, seed=4)
    with torch.no_grad():
        for layer, x in ((plain, one), (plain, two), (biased, one)):
            torch.testing.assert_close(layer(x, "triton"), torch.nn.functional.linear(x, layer.weight, layer.bias),
                                       rtol=1e-5, atol=1e-5)
        plain(one, "torch")
    assert calls == [(1, 1, 32)]


@pytest.mark.parametrize("static_weight", [False, True], ids=["weight_after_wait", "weight_before_wait"])
@pytest.mark.parametrize("kind", ["plain", "residual", "gated"])
@pytest.mark.parametrize("n, k", [(40, 48), (17, 3000)], ids=["40x48", "17x3000_three_steps"])
def test_normed_row_matches_float64(device, n, k, kind, static_weight):
    """W · (weight · rms_norm(h)) for h = x, residual + x or x·silu(gate), normalised block by block
    with the row's 1/rms computed in each program; the residual stream's sum is written, exactly."""
    w, x, nw = rand(device, n, k), rand(device, 1, 1, k, seed=1), rand(device, k, seed=2)
    other = rand(device, 1, 1, k, seed=3)
    row = NormedRow(x, nw, EPS, **({"residual": other} if kind == "residual" else
                                   {"gate": other} if kind == "gated" else {}))
    h = x.double() + other.double() if kind == "residual" else x.double()
    if kind == "gated":
        h = h * torch.nn.functional.silu(other.double())
    y = gemv(row, w, static_weight=static_weight)
    assert y.shape == (1, 1, n) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), norm64(h, nw) @ w.double().T, rtol=1e-5, atol=1e-4)
    if kind == "residual":
        assert torch.equal(row.stream, x + other)
    else:
        assert row.stream is x


@pytest.mark.parametrize("kind", ["plain", "residual", "gated"])
def test_normed_row_rounds_as_the_norm_kernels(device, kind):
    """bf16: the normalised row is rounded where the norm kernels round it (only the order of the
    fp32 sum of squares differs), so the product is the GEMV of the norm kernels' output."""
    k = 2000
    w, x = rand(device, 24, k, dtype=torch.bfloat16), rand(device, 1, k, dtype=torch.bfloat16, seed=1)
    nw, other = rand(device, k, dtype=torch.bfloat16, seed=2), rand(device, 1, k, dtype=torch.bfloat16, seed=3)
    if kind == "plain":
        row, normed = NormedRow(x, nw, EPS), rms_norm(x, nw, EPS)
    elif kind == "residual":
        row = NormedRow(x, nw, EPS, residual=other)
        normed, total = add_rms_norm(x.clone(), other.clone(), nw, EPS)
    else:
        row, normed = NormedRow(x, nw, EPS, gate=other), rms_norm_gated(x, other, nw, k, EPS)
    got = gemv(row, w, static_weight=True)
    if kind == "residual":
        assert torch.equal(row.stream, total)
    torch.testing.assert_close(got.float(), gemv(normed, w).float(), rtol=2 ** -7, atol=2e-2)


def test_normed_row_checks_its_parts(device):
    x = rand(device, 1, 8)
    with pytest.raises(ValueError, match="weight: expected 8 features in torch.float32"):
        NormedRow(x, rand(device, 8, dtype=torch.bfloat16), EPS)
    with pytest.raises(ValueError, match="residual or a gate, not both"):
        NormedRow(x, rand(device, 8), EPS, residual=x, gate=x)
    with pytest.raises(ValueError, match="residual: expected one row of 8 features"):
        gemv(NormedRow(x, rand(device, 8), EPS, residual=rand(device, 2, 8)), rand(device, 4, 8))


@pytest.mark.parametrize("static_weight", [False, True], ids=["weights_after_wait", "weights_before_wait"])
@pytest.mark.parametrize("normed", [False, True], ids=["row", "normed_row"])
def test_gemv_swiglu_is_two_gemvs_and_silu_mul(device, static_weight, normed):
    """One launch, the same roundings: each projection rounded to bf16, silu's output too."""
    k, n = 1500, 40
    x, nw = rand(device, 1, 1, k, dtype=torch.bfloat16), rand(device, k, dtype=torch.bfloat16, seed=1)
    wg, wu = rand(device, n, k, dtype=torch.bfloat16, seed=2), rand(device, n, k, dtype=torch.bfloat16, seed=3)
    src = NormedRow(x, nw, EPS) if normed else x
    got = gemv_swiglu(src, wg, wu, static_weight=static_weight)
    assert got.shape == (1, 1, n) and got.dtype == torch.bfloat16
    assert torch.equal(got, silu_mul(gemv(src, wg), gemv(src, wu)))
    with pytest.raises(ValueError, match=r"up_weight: expected shape \(40, 1500\)"):
        gemv_swiglu(x, wg, wu[:, :-1])
