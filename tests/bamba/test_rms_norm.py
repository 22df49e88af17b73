"""The one-launch RMSNorm kernels against a float64 evaluation of the definition and against the
PyTorch modules they stand in for (CPU: Triton interpreter)."""
import pytest
import torch
import torch.nn.functional as F

from bamba.kernels.rms_norm import rms_norm, rms_norm_gated
from bamba.modeling_bamba import BambaRMSNorm, BambaRMSNormGated

EPS = 1e-5


def rand(device, *shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)


def norm64(h, weight, group_size):
    h = h.double().unflatten(-1, (-1, group_size))
    h = h / h.pow(2).mean(-1, keepdim=True).add(EPS).sqrt()
    return weight.double() * h.flatten(-2)


@pytest.mark.parametrize("shape", [(2, 5, 48), (3, 40), (1, 1, 4096)], ids=["b2l5d48", "d40", "d4096"])
def test_rms_norm_matches_definition(device, shape):
    x, w = rand(device, *shape), rand(device, shape[-1], seed=1)
    y = rms_norm(x, w, EPS)
    assert y.shape == x.shape and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), norm64(x, w, shape[-1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float32])
def test_rms_norm_dtypes_follow_the_module(device, w_dtype):
    """bf16 activations: normalised in fp32, cast to bf16, times the weight in the promoted dtype."""
    x = rand(device, 2, 7, 40, dtype=torch.bfloat16)
    module = BambaRMSNorm(40, EPS).to(device=device, dtype=w_dtype)
    with torch.no_grad():
        module.weight.copy_(rand(device, 40, seed=2))
        want = module(x)
    got = rms_norm(x, module.weight, EPS)
    assert got.dtype == want.dtype == torch.promote_types(w_dtype, torch.bfloat16)
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("group_size", [80, 16, 20], ids=["one_group", "5_groups", "4_groups_of_20"])
def test_gated_matches_definition(device, group_size):
    y, z, w = rand(device, 2, 3, 80), rand(device, 2, 3, 80, seed=1), rand(device, 80, seed=2)
    got = rms_norm_gated(y, z, w, group_size, EPS)
    assert got.shape == y.shape and got.dtype == torch.float32
    want = norm64(y.double() * F.silu(z.double()), w, group_size)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_gated_bf16_strided_gate_follows_the_module(device):
    """The gate as the model passes it: a bf16 view into the input projection's wider rows."""
    proj = rand(device, 2, 5, 3 * 64, dtype=torch.bfloat16)
    gate, y = proj[..., :64], rand(device, 2, 5, 64, dtype=torch.bfloat16, seed=3)
    assert not gate.is_contiguous()
    module = BambaRMSNormGated(64, 32, EPS).to(device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        module.weight.copy_(rand(device, 64, seed=4))
        want = module(y, gate)
    got = rms_norm_gated(y, gate, module.weight, 32, EPS)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
