"""Bad arguments raise ValueError naming the argument and what was expected."""
import pytest
import torch

import bamba


def _args(kit, **over):
    inp = kit.make(1, 8, 4, 16, 2, 16)
    inp.update(over)
    return inp


@pytest.mark.parametrize("chunk", [24, 8, 0, 16.0, None])
def test_bad_chunk_size(kit, chunk):
    with pytest.raises(ValueError, match="chunk_size"):
        bamba.ssd(**_args(kit), chunk_size=chunk)


def test_unknown_strategy(kit):
    with pytest.raises(ValueError, match="strategy.*reference"):
        bamba.ssd(**_args(kit), chunk_size=16, strategy="fast")
    with pytest.raises(ValueError, match="strategy"):
        bamba.ssd_step(torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 16), torch.zeros(1, 4),
                       -torch.ones(4), torch.zeros(1, 2, 16), torch.zeros(1, 2, 16), strategy="nope")


def test_heads_not_divisible_by_groups(kit):
    inp = kit.make(1, 8, 4, 16, 3, 16)
    with pytest.raises(ValueError, match="h % g"):
        bamba.ssd(**inp, chunk_size=16)


@pytest.mark.parametrize("name,bad,match", [
    ("dt", lambda v: v[:, :, :2], "dt"),
    ("A", lambda v: v[:2], "A"),
    ("C", lambda v: v[:, :5], "C"),
    ("D", lambda v: v[:3], "D"),
    ("dt_bias", lambda v: v[:3], "dt_bias"),
    ("B", lambda v: v.double(), "dtype"),
    ("x", lambda v: v[0], "x"),
])
def test_shape_and_dtype_mismatch(kit, name, bad, match):
    inp = _args(kit)
    inp[name] = bad(inp[name])
    with pytest.raises(ValueError, match=match):
        bamba.ssd(**inp, chunk_size=16)


def test_initial_state_shape(kit):
    with pytest.raises(ValueError, match="initial_state"):
        bamba.ssd(**_args(kit, initial_state=torch.zeros(1, 4, 16, 8, device=kit.device)), chunk_size=16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_device_mismatch(kit):
    inp = _args(kit)
    inp["A"] = inp["A"].cpu()
    with pytest.raises(ValueError, match="device"):
        bamba.ssd(**inp, chunk_size=16)


def test_bad_dt_limit(kit):
    with pytest.raises(ValueError, match="dt_limit"):
        bamba.ssd(**_args(kit), chunk_size=16, dt_limit=(1.0, 0.5))


def test_independent_step_needs_position(kit):
    s = torch.zeros(1, 4, 16, 16, device=kit.device)
    a = (torch.zeros(1, 4, 16, device=kit.device), torch.zeros(1, 4, device=kit.device),
         -torch.ones(4, device=kit.device), torch.zeros(1, 2, 16, device=kit.device),
         torch.zeros(1, 2, 16, device=kit.device))
    with pytest.raises(ValueError, match="position"):
        bamba.ssd_step(s, *a, strategy="independent", chunk_size=16)
    with pytest.raises(ValueError, match="chunk_size"):
        bamba.ssd_step(s, *a, strategy="independent", chunk_size=12, position=3)
    with pytest.raises(ValueError, match="state"):
        bamba.ssd_step(s.half(), *a)


def test_triton_strategy_needs_cuda_or_interpreter(kit, monkeypatch):
    import bamba.kernels
    monkeypatch.setattr(bamba.kernels, "INTERPRET", False)
    inp = {k: (v.cpu() if v is not None else None) for k, v in _args(kit).items()}
    with pytest.raises(ValueError, match="CUDA"):
        bamba.ssd(**inp, chunk_size=16, strategy="default")
    with pytest.raises(ValueError, match="CUDA"):
        bamba.causal_conv1d(inp["x"][:, :, 0], torch.ones(16, 4), backend="triton")
    bamba.ssd(**inp, chunk_size=16, strategy="reference")  # the PyTorch path still runs


def test_triton_imported_first_on_a_cpu_machine():
    """A scorer built before bamba is imported loads triton first (transformers imports it); then
    the interpreter cannot be switched on. bamba still imports, its PyTorch backend runs, and the
    Triton backend says what to do instead of failing inside a kernel."""
    import os
    import subprocess
    import sys
    code = """
import triton, torch
import bamba
x = torch.randn(1, 5, 2, 4); dt = torch.randn(1, 5, 2); A = -torch.rand(2)
B = torch.randn(1, 5, 1, 4); C = torch.randn(1, 5, 1, 4)
y, _ = bamba.ssd(x, dt, A, B, C, chunk_size=16, strategy="optimized", backend="torch")
ref, _ = bamba.ssd(x, dt, A, B, C, chunk_size=16, strategy="reference")
assert torch.allclose(y, ref)
try:
    bamba.ssd(x, dt, A, B, C, chunk_size=16, strategy="optimized")
except ValueError as e:
    print(e)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "expected a CUDA tensor" in run.stdout and "before triton is first imported" in run.stdout
