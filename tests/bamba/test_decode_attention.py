"""One-token attention split over the keys against a float64 softmax (CPU: Triton interpreter)."""
import pytest
import torch

from bamba.kernels.decode_attention import decode_attention
from kernel_checks import rand


def attention64(q, k, v, mask):
    s = q.double() @ k.double().transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.softmax(s, -1) @ v.double()


def holes(device, b, s, seed):
    """A mask with random holes (left padding, unwritten cache slots); every row keeps a key."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, s, generator=g) < 0.7
    mask[:, -1] = True
    return mask.to(device)


@pytest.mark.parametrize("b, hkv, r, s, per_split", [
    (1, 2, 4, 37, None),     # fewer keys than a step
    (3, 1, 3, 300, 64),      # batch > 1, 3 query heads per KV head, 5 slices, the last one short
    (2, 2, 1, 129, 64),      # one query head per KV head; a last slice of one key
    (1, 8, 4, 1000, 128),    # Bamba-9B's 8 KV heads of 4 query heads; 8 slices
], ids=["s37", "b3_r3_s300_5splits", "b2_r1_s129", "hkv8_s1000"])
@pytest.mark.parametrize("masked", [False, True], ids=["all_keys", "holes"])
@pytest.mark.parametrize("d", [32, 8, 24], ids=["d32", "d8", "d24"])
def test_matches_float64(device, b, hkv, r, s, per_split, masked, d):
    """Head sizes below the 16-wide product and not a power of two are padded."""
    q, k, v = rand(device, b, hkv, r, d), rand(device, b, hkv, s, d, seed=1), rand(device, b, hkv, s, d, seed=2)
    mask = holes(device, b, s, seed=3) if masked else None
    got = decode_attention(q, k, v, mask, keys_per_split=per_split)
    assert got.shape == q.shape and got.dtype == q.dtype
    torch.testing.assert_close(got.double(), attention64(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_bf16_a_slice_with_every_key_masked(device):
    """A whole slice of masked keys (an unwritten stretch of the cache) adds nothing; a broadcast
    (1, S) mask serves every row; bf16 within its roundings."""
    b, hkv, r, s, d = 2, 2, 4, 256, 64
    q = rand(device, b, hkv, r, d, dtype=torch.bfloat16)
    k, v = rand(device, b, hkv, s, d, dtype=torch.bfloat16, seed=1), rand(device, b, hkv, s, d, dtype=torch.bfloat16, seed=2)
    mask = torch.zeros(1, s, dtype=torch.bool, device=device)
    mask[:, :100] = True
    got = decode_attention(q, k, v, mask, keys_per_split=64)
    want = attention64(q, k, v, mask.expand(b, s))
    assert got.dtype == torch.bfloat16 and not got.isnan().any()
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2)


def test_bad_shapes(device):
    q, k = rand(device, 1, 2, 4, 32), rand(device, 1, 2, 10, 32)
    with pytest.raises(ValueError, match=r"k, v: expected shape \(1, 2, S, 32\)"):
        decode_attention(q, k, k[:, :1])
    with pytest.raises(ValueError, match="mask: expected bool"):
        decode_attention(q, k, k, torch.ones(1, 9, dtype=torch.bool, device=device))
