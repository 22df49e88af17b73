"""Shared fixtures for the kernel tests: device choice, random SSD inputs, a naive recurrence."""
import pytest
import torch

import bamba.kernels  # noqa: F401  (sets TRITON_INTERPRET before any kernel is defined)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def one_launch_on_cpu(monkeypatch):
    """The model's one-launch forms (`modeling_bamba._one_launch`) on the CPU too, where their
    kernels run under the interpreter; on CUDA the model's own switch."""
    import bamba.modeling_bamba as m

    if DEVICE == "cpu":
        monkeypatch.setattr(m, "_one_launch", lambda x, backend: backend == "triton" and not torch.is_grad_enabled())


def make_ssd_inputs(b, l, h, p, g, n, *, dtype=torch.float32, device=DEVICE, seed=0,
                    dt_scale=1.0, dt_shift=0.0, with_d=True, with_bias=True, with_init=False):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype=dtype, device=device)

    inp = dict(
        x=r(b, l, h, p), dt=r(b, l, h, scale=dt_scale) + dt_shift,
        A=-(torch.rand(h, generator=gen, dtype=torch.float64) * 1.5 + 0.05).to(dtype=dtype, device=device),
        B=r(b, l, g, n, scale=0.5), C=r(b, l, g, n, scale=0.5),
        D=r(h) if with_d else None, dt_bias=r(h, scale=0.5) if with_bias else None,
        initial_state=r(b, h, p, n) if with_init else None,
    )
    return inp


def to64(inp):
    return {k: (None if v is None else v.double()) for k, v in inp.items()}


def naive_recurrence(x, dt, A, B, C, D=None, dt_bias=None, initial_state=None,
                     dt_softplus=True, dt_limit=(0.0, float("inf"))):
    """Token-by-token float64 recurrence straight from the definition (DESIGN.md §3)."""
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    if dt_softplus:
        dt = torch.nn.functional.softplus(dt)
    dt = dt.clamp(dt_limit[0], dt_limit[1])
    rep = h // g
    state = (torch.zeros(b, h, p, n, dtype=torch.float64, device=x.device) if initial_state is None
             else initial_state.double().clone())
    ys = []
    for t in range(l):
        Bt = B[:, t].repeat_interleave(rep, dim=1)
        Ct = C[:, t].repeat_interleave(rep, dim=1)
        state = torch.exp(dt[:, t] * A)[:, :, None, None] * state + \
            (dt[:, t, :, None] * x[:, t])[..., None] * Bt[:, :, None, :]
        yt = torch.einsum("bhpn,bhn->bhp", state, Ct)
        if D is not None:
            yt = yt + D.double()[:, None] * x[:, t]
        ys.append(yt)
    return torch.stack(ys, dim=1), state


def assert_close(actual, expected, tol=1e-4):
    """Compare with a tolerance relative to the expected magnitude."""
    expected = expected.double()
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol * scale)


class _Kit:
    device = DEVICE
    make = staticmethod(make_ssd_inputs)
    to64 = staticmethod(to64)
    naive = staticmethod(naive_recurrence)
    close = staticmethod(assert_close)


@pytest.fixture
def kit():
    """Helpers for the SSD tests (a fixture, so test modules need not import conftest)."""
    return _Kit
