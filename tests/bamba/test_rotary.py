"""The one-token rotary embedding with its cache writes against the model's PyTorch form (CPU:
Triton interpreter)."""
import pytest
import torch

from bamba.kernels.rotary import rotary_step
from bamba.modeling_bamba import apply_rotary
from kernel_checks import assert_rounded_as_torch_rounds, rand


# The interpreter truncates each product to bf16; products below 16 for these inputs: 1/16 each.
CPU_ATOL = 2 / 16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b, h, hkv, d, r", [(1, 4, 2, 16, 8), (3, 6, 3, 24, 24), (2, 32, 8, 128, 64)],
                         ids=["partial", "b3_full_d24", "bamba9b"])
def test_matches_apply_rotary_and_index_copy(device, dtype, b, h, hkv, d, r):
    s, slot = 11, torch.tensor([7], device=device)
    q, k, v = rand(device, b, h, 1, d, dtype=dtype), rand(device, b, hkv, 1, d, dtype=dtype, seed=1), \
        rand(device, b, hkv, 1, d, dtype=dtype, seed=2)
    cos, sin = rand(device, b, 1, r, dtype=dtype, seed=3), rand(device, b, 1, r, dtype=dtype, seed=4)
    keys, values = rand(device, b, hkv, s, d, dtype=dtype, seed=5), rand(device, b, hkv, s, d, dtype=dtype, seed=6)
    want_keys, want_values = keys.clone(), values.clone()
    want_keys.index_copy_(2, slot, apply_rotary(k, cos, sin))
    want_values.index_copy_(2, slot, v)
    got = rotary_step(q, k, v, cos, sin, keys, values, slot)
    assert got.shape == q.shape and got.dtype == dtype
    assert_rounded_as_torch_rounds(got, apply_rotary(q, cos, sin), CPU_ATOL)
    assert_rounded_as_torch_rounds(keys, want_keys, CPU_ATOL)  # the other slots untouched
    assert torch.equal(values, want_values)


def test_strided_projections_and_bad_shapes(device):
    """q, k, v as the model passes them: views (b, heads, 1, d) of one projection row."""
    b, h, hkv, d = 2, 4, 2, 16
    q = rand(device, b, 1, h * d).view(b, 1, h, d).transpose(1, 2)
    k, v = (rand(device, b, 1, hkv * d, seed=i).view(b, 1, hkv, d).transpose(1, 2) for i in (1, 2))
    cos, sin = rand(device, b, 1, 8, seed=3), rand(device, b, 1, 8, seed=4)
    keys, values = torch.zeros(b, hkv, 5, d, device=device), torch.zeros(b, hkv, 5, d, device=device)
    slot = torch.tensor([0], device=device)
    assert torch.equal(rotary_step(q, k, v, cos, sin, keys, values, slot), apply_rotary(q, cos, sin))
    assert torch.equal(keys[:, :, 0:1], apply_rotary(k, cos, sin)) and torch.equal(values[:, :, 0:1], v)
    with pytest.raises(ValueError, match="one position each"):
        rotary_step(q.expand(b, h, 2, d), k, v, cos, sin, keys, values, slot)
    with pytest.raises(ValueError, match="r even and at most 16"):
        rotary_step(q, k, v, cos[..., :7], sin[..., :7], keys, values, slot)
    with pytest.raises(ValueError, match="share one dtype"):
        rotary_step(q, k, v, cos.bfloat16(), sin.bfloat16(), keys, values, slot)
