"""The one-row projection kernel against a float64 product and against nn.Linear (CPU: Triton
interpreter)."""
import pytest
import torch

from bamba.kernels.gemv import gemv
from bamba.modeling_bamba import BambaLinear


def rand(device, *shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)


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
