"""Inputs and comparisons shared by the one-launch kernel tests (imported by the test modules of
this folder, which pytest puts on sys.path)."""
import torch

EPS = 1e-5  # the norms' epsilon


def rand(device, *shape, dtype=torch.float32, seed=0):
    """Seeded standard-normal values, drawn on the CPU: the same on every device."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)


def assert_rounded_as_torch_rounds(got, want, cpu_atol=0.0):
    """Bit for bit on the GPU and in fp32 (results rounded to nearest-even, as PyTorch rounds).
    The interpreter truncates fp32 -> bf16 conversions instead, so in bf16 on the CPU: within one
    bf16 unit of the result, and `cpu_atol` for truncated intermediates."""
    if got.is_cuda or got.dtype == torch.float32:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=cpu_atol)


def norm64(h, weight, group_size=None):
    """weight · h / rms(h) in float64, the rms over groups of group_size channels (default: all)."""
    h = h.double().unflatten(-1, (-1, group_size or h.shape[-1]))
    h = h / h.pow(2).mean(-1, keepdim=True).add(EPS).sqrt()
    return weight.double() * h.flatten(-2)
