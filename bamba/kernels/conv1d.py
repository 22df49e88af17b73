"""Causal depthwise conv1d (+ SiLU) for Mamba2's input projection: prefill and one-token update.

Layout as the model uses it: x (b, l, d) channels-last, weight (d, k), conv state (b, d, k-1)
holding the previous k-1 inputs (oldest first). Triton kernels with a PyTorch reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .ssd_common import dependent_launch
from .utils import _fail, cdiv, next_power_of_2, silu, wait_for_inputs

BACKENDS = ("triton", "reference")
ACTIVATIONS = (None, "silu")


def _check(x, weight, bias, conv_state, activation, backend, step):
    if activation not in ACTIVATIONS:
        _fail("activation", f"one of {ACTIVATIONS}", repr(activation))
    if backend is not None and backend not in BACKENDS:
        _fail("backend", f"one of {BACKENDS} or None", repr(backend))
    if not isinstance(x, torch.Tensor) or x.dim() != (2 if step else 3) or not x.is_floating_point():
        _fail("x", "a float tensor (b, d)" if step else "a float tensor (b, l, d)",
              getattr(x, "shape", type(x).__name__))
    d = x.shape[-1]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != d or weight.shape[1] < 1:
        _fail("weight", f"shape ({d}, k)", getattr(weight, "shape", type(weight).__name__))
    k = weight.shape[1]
    for name, t, shape in (("weight", weight, None), ("bias", bias, (d,)),
                           ("conv_state", conv_state, (x.shape[0], d, k - 1))):
        if t is None:
            continue
        if shape is not None and tuple(t.shape) != shape:
            _fail(name, f"shape {shape}", tuple(t.shape))
        if t.device != x.device:
            _fail(name, f"device {x.device}", t.device)
        if not t.is_floating_point():
            _fail(name, "a floating-point tensor", t.dtype)
    if conv_state is not None and conv_state.dtype != x.dtype:
        _fail("conv_state", f"dtype {x.dtype} (same as x)", conv_state.dtype)
    return k


def _use_triton(x, backend):
    from . import INTERPRET, INTERPRET_HINT
    if backend == "triton" and not x.is_cuda and not INTERPRET:
        _fail("x", f"a CUDA tensor for backend 'triton' (or {INTERPRET_HINT})", f"device {x.device}")
    return backend == "triton" or (backend is None and x.is_cuda)


# ----------------------------------------------------------------------------- reference
def causal_conv1d_reference(x, weight, bias=None, activation="silu", conv_state=None):
    b, l, d = x.shape
    k = weight.shape[1]
    xt = x.transpose(1, 2)
    prev = conv_state if conv_state is not None else x.new_zeros(b, d, k - 1)
    full = torch.cat([prev, xt], dim=2)
    y = F.conv1d(full.float() if x.dtype != torch.float64 else full,
                 weight.to(torch.float64 if x.dtype == torch.float64 else torch.float32).unsqueeze(1),
                 None if bias is None else bias.to(torch.float64 if x.dtype == torch.float64 else torch.float32),
                 groups=d)
    if activation == "silu":
        y = F.silu(y)
    return y.transpose(1, 2).to(x.dtype), full[:, :, full.shape[2] - (k - 1):].contiguous()


# ----------------------------------------------------------------------------- Triton
@triton.jit
def _conv1d_fwd_kernel(x_ptr, w_ptr, b_ptr, s_ptr, y_ptr, L, Dm,
                       sx_b, sx_l, sx_d, sw_d, sw_k, ss_b, ss_d, ss_k, sy_b, sy_l, sy_d,
                       K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr,
                       SILU: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr):
    pid_b = tl.program_id(0)
    t = tl.program_id(1) * BL + tl.arange(0, BL)
    c = tl.program_id(2) * BD + tl.arange(0, BD)
    cmask = c < Dm
    acc = tl.zeros((BL, BD), dtype=tl.float32)
    for i in tl.static_range(K):
        src = t - (K - 1) + i                      # input position read by tap i
        m_x = (src >= 0) & (src < L)
        v = tl.load(x_ptr + pid_b * sx_b + src[:, None] * sx_l + c[None, :] * sx_d,
                    mask=m_x[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        if HAS_STATE:
            j = src + (K - 1)                      # state column of a negative position
            m_s = (src < 0) & (j >= 0) & (t < L)
            v += tl.load(s_ptr + pid_b * ss_b + c[None, :] * ss_d + j[:, None] * ss_k,
                         mask=m_s[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        w = tl.load(w_ptr + c * sw_d + i * sw_k, mask=cmask, other=0.0).to(tl.float32)
        acc += v * w[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if SILU:
        acc = silu(acc)
    tl.store(y_ptr + pid_b * sy_b + t[:, None] * sy_l + c[None, :] * sy_d,
             acc.to(y_ptr.dtype.element_ty), mask=(t < L)[:, None] & cmask[None, :])


@triton.jit
def _conv1d_update_kernel(x_ptr, w_ptr, b_ptr, s_ptr, y_ptr, Dm,
                          sx_b, sx_d, sw_d, sw_k, ss_b, ss_d, ss_k, sy_b, sy_d,
                          K: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                          BD: tl.constexpr, PDL: tl.constexpr):
    wait_for_inputs(PDL)
    pid_b = tl.program_id(0)
    c = tl.program_id(1) * BD + tl.arange(0, BD)
    cmask = c < Dm
    xv = tl.load(x_ptr + pid_b * sx_b + c * sx_d, mask=cmask, other=0.0)
    acc = xv.to(tl.float32) * tl.load(w_ptr + c * sw_d + (K - 1) * sw_k, mask=cmask, other=0.0).to(tl.float32)
    s_base = s_ptr + pid_b * ss_b + c * ss_d
    prev = xv  # value that moves into the slot being written (shift left by one)
    for i in tl.static_range(K - 1):
        j = K - 2 - i                              # walk from newest to oldest column
        sv = tl.load(s_base + j * ss_k, mask=cmask, other=0.0)
        acc += sv.to(tl.float32) * tl.load(w_ptr + c * sw_d + j * sw_k, mask=cmask, other=0.0).to(tl.float32)
        tl.store(s_base + j * ss_k, prev.to(s_ptr.dtype.element_ty), mask=cmask)
        prev = sv
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    if SILU:
        acc = silu(acc)
    tl.store(y_ptr + pid_b * sy_b + c * sy_d, acc.to(y_ptr.dtype.element_ty), mask=cmask)


def _new_state(x, conv_state, k):
    """Last k-1 inputs of concat(conv_state, x) as (b, d, k-1), without copying all of x."""
    b, l, d = x.shape
    if k == 1:
        return x.new_zeros(b, d, 0)
    xt = x.transpose(1, 2)
    if l >= k - 1:
        return xt[:, :, l - (k - 1):].contiguous()
    prev = conv_state if conv_state is not None else x.new_zeros(b, d, k - 1)
    return torch.cat([prev[:, :, l:], xt], dim=2).contiguous()


def causal_conv1d(x, weight, bias=None, *, activation="silu", conv_state=None, backend=None):
    """Causal depthwise conv over x (b, l, d). Returns (y (b, l, d), new_conv_state (b, d, k-1)).

    backend: "triton", "reference" (PyTorch) or None (Triton on CUDA tensors, else PyTorch).
    """
    k = _check(x, weight, bias, conv_state, activation, backend, step=False)
    if not _use_triton(x, backend):
        return causal_conv1d_reference(x, weight, bias, activation, conv_state)
    b, l, d = x.shape
    y = torch.empty_like(x)
    BL, BD = 32, min(128, max(16, next_power_of_2(d)))
    st = conv_state if conv_state is not None else x  # dummy pointer when absent
    ss = conv_state.stride() if conv_state is not None else (0, 0, 0)
    grid = (b, cdiv(l, BL), cdiv(d, BD))
    _conv1d_fwd_kernel[grid](x, weight, bias if bias is not None else weight, st, y, l, d,
                             *x.stride(), *weight.stride(), *ss, *y.stride(),
                             K=k, HAS_BIAS=bias is not None, HAS_STATE=conv_state is not None,
                             SILU=activation == "silu", BL=BL, BD=BD)
    return y, _new_state(x, conv_state, k)


def causal_conv1d_update(x, conv_state, weight, bias=None, *, activation="silu", backend=None):
    """One token x (b, d): returns y (b, d) and shifts x into conv_state (b, d, k-1) in place."""
    if conv_state is None:
        _fail("conv_state", "a tensor (b, d, k-1)", None)
    k = _check(x, weight, bias, conv_state, activation, backend, step=True)
    if not _use_triton(x, backend):
        y, new = causal_conv1d_reference(x[:, None], weight, bias, activation, conv_state)
        conv_state.copy_(new)
        return y[:, 0]
    b, d = x.shape
    y = torch.empty_like(x)
    BD = min(256, max(16, next_power_of_2(d)))
    _conv1d_update_kernel[(b, cdiv(d, BD))](
        x, weight, bias if bias is not None else weight, conv_state, y, d,
        *x.stride(), *weight.stride(), *conv_state.stride(), *y.stride(),
        K=k, HAS_BIAS=bias is not None, SILU=activation == "silu", BD=BD, **dependent_launch(x))
    return y
