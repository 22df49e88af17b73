"""The one-launch RMSNorm (with and without the residual add) and silu·up kernels against a float64
evaluation of the definition and against the PyTorch modules they stand in for (CPU: Triton
interpreter)."""
import pytest
import torch
import torch.nn.functional as F

from bamba.kernels.rms_norm import add_rms_norm, rms_norm, rms_norm_gated, silu_mul
from bamba.modeling_bamba import BambaMLP, BambaRMSNorm, BambaRMSNormGated
from kernel_checks import EPS, assert_rounded_as_torch_rounds, norm64, rand


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_matches_definition(device, dtype):
    """The sum is residual + x rounded to their dtype (bit for bit: one rounding of an fp32 sum of
    two values of that dtype), and the norm is the norm of that sum."""
    x, r, w = rand(device, 3, 4, 48, dtype=dtype), rand(device, 3, 4, 48, dtype=dtype, seed=1), rand(device, 48, seed=2)
    want_sum = (r.double() + x.double()).to(dtype)
    normed, total = add_rms_norm(x.clone(), r.clone(), w, EPS)
    assert total.dtype == dtype and total.shape == x.shape
    assert_rounded_as_torch_rounds(total, want_sum)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(normed.double(), norm64(total, w, 48), rtol=tol, atol=tol)


def test_residual_norm_follows_the_module(device):
    """The module's PyTorch form of the residual add and norm is what the kernel stands in for."""
    x, r = rand(device, 2, 5, 64, dtype=torch.bfloat16), rand(device, 2, 5, 64, dtype=torch.bfloat16, seed=3)
    module = BambaRMSNorm(64, EPS).to(device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        module.weight.copy_(rand(device, 64, seed=4))
        want, want_sum = module(x, "torch", r)
        got, got_sum = add_rms_norm(x.clone(), r.clone(), module.weight, EPS)
        assert_rounded_as_torch_rounds(got_sum, want_sum)
        # the norm of the kernel's own sum, within its two bf16 roundings (the norm's, the product's)
        torch.testing.assert_close(got.float(), module(got_sum).float(), rtol=2 ** -6, atol=1e-2)


@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float32])
def test_add_rms_norm_reuses_its_inputs_memory(device, w_dtype):
    """The sum is written over the residual, the norm over x where it has x's dtype (a wider
    weight promotes it: then a new tensor, and x is left as it was)."""
    x, r = rand(device, 2, 3, 32, dtype=torch.bfloat16), rand(device, 2, 3, 32, dtype=torch.bfloat16, seed=1)
    x0, w = x.clone(), rand(device, 32, seed=2).to(w_dtype)
    normed, total = add_rms_norm(x, r, w, EPS)
    assert total.data_ptr() == r.data_ptr()
    same_dtype = w_dtype == torch.bfloat16
    assert (normed.data_ptr() == x.data_ptr()) == same_dtype
    assert torch.equal(x, normed if same_dtype else x0)
    torch.testing.assert_close(normed.double(), norm64(total, w, 32), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("d", [40, 5000], ids=["d40", "d5000_two_blocks"])
def test_silu_mul_matches_definition(device, d):
    g, u = rand(device, 3, d, seed=5), rand(device, 3, d, seed=6)
    got = silu_mul(g, u)
    assert got.shape == g.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), F.silu(g.double()) * u.double(), rtol=1e-5, atol=1e-6)


def test_silu_mul_bf16_strided_follows_the_module(device):
    """bf16 as PyTorch rounds it (silu's output in bf16, then the product), inputs with wider rows."""
    wide = rand(device, 2, 3, 2 * 96, dtype=torch.bfloat16, seed=7)
    g, u = wide[..., :96], wide[..., 96:]
    assert not g.is_contiguous()
    got = silu_mul(g, u)
    assert got.dtype == torch.bfloat16 and got.shape == g.shape
    # within its two bf16 roundings (silu's, the product's)
    torch.testing.assert_close(got.float(), (F.silu(g) * u).float(), rtol=2 ** -6, atol=1e-3)


def test_mlp_one_launch_product_equals_the_torch_form(device):
    """The MLP's "triton" form (silu·up in one launch, on CUDA at inference) against its PyTorch
    form on the same weights; on CPU both are the PyTorch form, so this checks the switch."""
    from bamba import BambaConfig
    config = BambaConfig(hidden_size=32, intermediate_size=48, vocab_size=16, num_hidden_layers=1,
                         mamba_n_heads=2, mamba_d_head=32, mamba_d_state=16)
    torch.manual_seed(0)
    mlp = BambaMLP(config).to(device)
    x = rand(device, 2, 3, 32, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x, "triton"), mlp(x, "torch"), rtol=1e-5, atol=1e-6)
