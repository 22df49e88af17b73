"""Causal depthwise conv1d (+SiLU): Triton kernels and the PyTorch path vs torch's conv1d."""
import pytest
import torch
import torch.nn.functional as F

import bamba

BACKENDS = ["triton", "reference"]


def torch_conv(x, w, bias, activation):
    """Independent ground truth: F.conv1d with left zero padding, channels-last in and out."""
    k = w.shape[1]
    y = F.conv1d(x.transpose(1, 2).double(), w.double().unsqueeze(1),
                 None if bias is None else bias.double(), padding=k - 1, groups=x.shape[-1])
    y = y[..., : x.shape[1]]
    if activation == "silu":
        y = F.silu(y)
    return y.transpose(1, 2)


def _inputs(device, b=2, l=37, d=40, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, l, d, generator=g).to(device), torch.randn(d, k, generator=g).to(device),
            torch.randn(d, generator=g).to(device))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("activation,use_bias", [("silu", True), (None, False)])
def test_prefill_matches_torch(kit, backend, k, activation, use_bias):
    x, w, bias = _inputs(kit.device, k=k)
    bias = bias if use_bias else None
    y, state = bamba.causal_conv1d(x, w, bias, activation=activation, backend=backend)
    kit.close(y, torch_conv(x, w, bias, activation), tol=1e-5)
    torch.testing.assert_close(state, x[:, -(k - 1):].transpose(1, 2))


@pytest.mark.parametrize("backend", BACKENDS)
# pieces shorter and longer than k-1 = 3, and short pieces that continue from a non-zero state
@pytest.mark.parametrize("cuts", [(2,), (20,), (5, 6), (1, 3, 4)])
def test_state_continuation(kit, backend, cuts):
    x, w, bias = _inputs(kit.device)
    y_full, s_full = bamba.causal_conv1d(x, w, bias, backend=backend)
    ys, state = [], None
    for start, end in zip((0, *cuts), (*cuts, x.shape[1])):
        y, state = bamba.causal_conv1d(x[:, start:end], w, bias, conv_state=state, backend=backend)
        ys.append(y)
    kit.close(torch.cat(ys, dim=1), torch_conv(x, w, bias, "silu"), tol=1e-5)
    kit.close(y_full, torch_conv(x, w, bias, "silu"), tol=1e-5)
    torch.testing.assert_close(state, s_full)


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_matches_prefill(kit, backend):
    x, w, bias = _inputs(kit.device, l=12)
    y_full, s_full = bamba.causal_conv1d(x, w, bias, backend="reference")
    _, state = bamba.causal_conv1d(x[:, :5], w, bias, backend=backend)
    for t in range(5, 12):
        y_t = bamba.causal_conv1d_update(x[:, t], state, w, bias, backend=backend)
        kit.close(y_t, y_full[:, t], tol=1e-5)
    torch.testing.assert_close(state, s_full)


def test_bf16_triton(kit):
    x, w, bias = _inputs(kit.device)
    y, _ = bamba.causal_conv1d(x.bfloat16(), w, bias, backend="triton")
    assert y.dtype == torch.bfloat16
    kit.close(y, torch_conv(x.bfloat16().float(), w, bias, "silu"), tol=2e-2)


def test_errors(kit):
    x, w, bias = _inputs(kit.device)
    with pytest.raises(ValueError, match="weight"):
        bamba.causal_conv1d(x, w[:5], bias)
    with pytest.raises(ValueError, match="activation"):
        bamba.causal_conv1d(x, w, bias, activation="relu")
    with pytest.raises(ValueError, match="conv_state"):
        bamba.causal_conv1d(x, w, bias, conv_state=torch.zeros(2, 40, 2, device=kit.device))
    with pytest.raises(ValueError, match="backend"):
        bamba.causal_conv1d(x, w, bias, backend="cuda")
