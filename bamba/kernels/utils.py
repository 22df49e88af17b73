"""Helpers shared by every SSD / conv1d implementation: argument checks and dt processing."""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from . import INTERPRET

LOG2E = 1.4426950408889634
LOG2E_C = tl.constexpr(LOG2E)  # the same, usable inside @triton.jit code


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host code. triton.cdiv and triton.next_power_of_2 are constexpr functions:
    called from Python, each call unwraps its arguments (several µs; a scan call made a dozen)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), for host code (see cdiv)."""
    return 1 << max(n - 1, 0).bit_length()


def _fail(name: str, expected: str, got) -> None:
    raise ValueError(f"{name}: expected {expected}, got {got}")


def check_chunk_size(chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        _fail("chunk_size", "an int power of two >= 16", repr(chunk_size))
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        _fail("chunk_size", "a power of two >= 16", chunk_size)
    return chunk_size


def _check_tensor(name, t, shape, ref):
    if not isinstance(t, torch.Tensor):
        _fail(name, "a torch.Tensor", type(t).__name__)
    if tuple(t.shape) != tuple(shape):
        _fail(name, f"shape {tuple(shape)}", tuple(t.shape))
    if t.device != ref.device:
        _fail(name, f"device {ref.device}", t.device)


def _check_float(name, t):
    if not t.is_floating_point():
        _fail(name, "a floating-point tensor", t.dtype)


def check_dt_limit(dt_limit):
    try:
        lo, hi = (float(v) for v in dt_limit)
    except Exception:
        _fail("dt_limit", "a pair (min, max) of floats", repr(dt_limit))
    if not (lo >= 0.0 and hi >= lo) or math.isnan(hi):
        _fail("dt_limit", "0 <= min <= max", (lo, hi))
    return lo, hi


def check_ssd_args(x, dt, A, B, C, D, dt_bias, initial_state, *, step=False):
    """Validate shapes/dtypes/devices. Returns (b, l, h, p, g, n); l is None for a step."""
    if not isinstance(x, torch.Tensor):
        _fail("x", "a torch.Tensor", type(x).__name__)
    want = 3 if step else 4
    if x.dim() != want:
        _fail("x", "(b, h, p)" if step else "(b, l, h, p)", tuple(x.shape))
    _check_float("x", x)
    if step:
        b, h, p = x.shape
        l = None
        lead = (b,)
    else:
        b, l, h, p = x.shape
        lead = (b, l)
    if not isinstance(B, torch.Tensor) or B.dim() != len(lead) + 2:
        _fail("B", "(b, g, n)" if step else "(b, l, g, n)", getattr(B, "shape", type(B).__name__))
    g, n = B.shape[-2:]
    if g < 1 or h % g != 0:
        _fail("B", f"a group count g dividing h={h} (h % g == 0)", f"g={g}")
    _check_tensor("dt", dt, (*lead, h), x)
    _check_tensor("A", A, (h,), x)
    _check_tensor("B", B, (*lead, g, n), x)
    _check_tensor("C", C, (*lead, g, n), x)
    for name, t in (("dt", dt), ("A", A), ("B", B), ("C", C)):
        _check_float(name, t)
    if B.dtype != x.dtype or C.dtype != x.dtype:
        _fail("B/C", f"dtype {x.dtype} (same as x)", (B.dtype, C.dtype))
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None:
            _check_tensor(name, t, (h,), x)
            _check_float(name, t)
    if initial_state is not None:
        _check_tensor("initial_state" if not step else "state", initial_state, (b, h, p, n), x)
        _check_float("initial_state" if not step else "state", initial_state)
    return b, l, h, p, g, n


def kernel_dt_limit(dt_limit):
    """(min, max) for the kernels' clamp; the default (0, inf) means no clamp at all."""
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    if lo == 0.0 and hi == float("inf"):
        lo = float("-inf")
    return lo, hi


def process_dt(dt, dt_bias, dt_softplus, dt_limit):
    """PyTorch form of the dt transform: softplus(dt + bias) clamped to dt_limit (input dtype kept)."""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = torch.nn.functional.softplus(dt)
    lo, hi = dt_limit
    if lo > 0.0 or hi != float("inf"):
        dt = dt.clamp(min=lo, max=hi)
    return dt


@triton.jit
def softplus_clamp(dt, DT_SOFTPLUS: tl.constexpr, dt_min, dt_max):
    """Triton form of process_dt (after the bias was added). Computed in dt's dtype."""
    if DT_SOFTPLUS:
        u = tl.exp(-tl.abs(dt))
        # log1p(u) for u in (0, 1]; the series branch keeps precision when u is tiny.
        lp = tl.where(u < 1e-4, u * (1.0 - 0.5 * u), tl.log(1.0 + u))
        dt = tl.maximum(dt, 0.0) + lp
    dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    return dt


@triton.jit
def silu(z):
    """silu(z) = z / (1 + exp(−z)), as PyTorch computes it (fp32)."""
    return z / (1.0 + tl.exp(-z))


@triton.jit
def swiglu(g, u):
    """silu(g)·u in fp32 from operands in the activations' dtype, with silu's output rounded to that
    dtype first, as PyTorch's two kernels round it."""
    return silu(g.to(tl.float32)).to(g.dtype).to(tl.float32) * u.to(tl.float32)


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """The first step of a kernel launched with programmatic dependent launch (ssd_common.
    dependent_launch): the kernel may already be resident while the one before it in the stream
    runs, which hides its launch behind that kernel's tail; it must not touch memory before that
    kernel has finished (its writes are then visible). Then the next kernel may start launching."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def decay(e, EXP2: tl.constexpr):
    """exp(e) of a log-decay e <= 0 (2**e when the cumsum is in log2 units); e is clamped at 0,
    where rounding can leave it slightly above."""
    if EXP2:
        return tl.exp2(tl.minimum(e, 0.0))
    else:
        return tl.exp(tl.minimum(e, 0.0))


# The Triton interpreter (CPU) multiplies bf16/fp16 dot operands wrongly; it gets fp32 operands.
_UPCAST_DOT = tl.constexpr(INTERPRET)


@triton.jit
def mm(a, b):
    """a @ b with fp32 accumulation; operands in their own dtype on GPUs (ieee for fp32)."""
    if _UPCAST_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision="ieee")
