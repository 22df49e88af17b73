"""Public entry points of the SSD scan: one registry of chunking strategies.

``STRATEGIES`` names them; ``ssd`` runs a whole sequence, ``ssd_step`` one token.
A strategy is chosen per call (the model passes its own), never through module globals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .kernels import ssd_reference as _ref
from .kernels.utils import check_chunk_size, check_dt_limit, check_ssd_args


@dataclass(frozen=True)
class Strategy:
    name: str
    scan: Callable      # (x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_limit, initial_state)
    step: Callable      # (state, x, dt, A, B, C, D, dt_bias, dt_softplus, dt_limit, reset: None|bool|(b,) bool)
    exact: bool         # equals the recurrence up to rounding
    chunk_local: bool   # state is reset at every chunk boundary (decode must reset too)
    description: str
    torch_scan: Callable = _ref.ssd_reference  # the same math in PyTorch: backend="torch"


def _triton(module: str, attr: str):
    """Import Triton implementations lazily so importing bamba stays cheap (once: host time)."""
    fn = None

    def call(*args, **kwargs):
        nonlocal fn
        if fn is None:
            import importlib
            fn = getattr(importlib.import_module(f"bamba.kernels.{module}"), attr)
        return fn(*args, **kwargs)
    call.__name__ = attr
    return call


_step_triton = _triton("ssd_step", "ssd_step_triton")

REGISTRY: dict[str, Strategy] = {
    "reference": Strategy("reference", _ref.ssd_reference, _ref.ssd_step_reference, True, False,
                          "pure PyTorch, chunk by chunk; fp32/fp64 ground truth and CPU path"),
    "default": Strategy("default", _triton("ssd_chunk_scan", "ssd_default"), _step_triton, True, False,
                        "Triton pipeline: chunk cumsum, C·Bᵀ, chunk state, state passing, chunk scan"),
    "optimized": Strategy("optimized", _triton("ssd_optimized", "ssd_optimized"), _step_triton, True,
                          False, "Triton, same math in fewer launches: fused dt/cumsum, exp2"),
    "independent": Strategy("independent", _triton("ssd_independent", "ssd_independent"), _step_triton,
                            False, True, "Triton, chunk-local: every chunk starts from zero state",
                            _ref.ssd_chunk_local_reference),
}
STRATEGIES: tuple[str, ...] = tuple(REGISTRY)
# "triton": the strategy's kernels (on CUDA, or under the Triton interpreter without a GPU);
# "torch": its definition in PyTorch (exact strategies: the reference scan; independent: the
# reference scan restarted at every chunk), for CPUs, where the interpreter is far too slow to
# serve a model.
BACKENDS = ("triton", "torch")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    return backend


def _check_runnable(impl: Strategy, x, backend: str) -> None:
    """Triton kernels need CUDA tensors, or the interpreter (see bamba.kernels)."""
    from .kernels import INTERPRET, INTERPRET_HINT
    if check_backend(backend) == "triton" and impl.name != "reference" and not x.is_cuda and not INTERPRET:
        raise ValueError(f"x: expected a CUDA tensor for Triton strategy {impl.name!r} (or run with "
                         f"{INTERPRET_HINT}), got device {x.device}")


def get_strategy(strategy: str) -> Strategy:
    if strategy not in REGISTRY:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    return REGISTRY[strategy]


def ssd(x, dt, A, B, C, *, chunk_size, D=None, dt_bias=None, dt_softplus=True,
        dt_limit=(0.0, float("inf")), initial_state=None, strategy="default", backend="triton"):
    """Chunked SSD scan. Returns (y like x, final_state fp32 (b,h,p,n); fp64 for fp64 inputs).

    ``independent`` treats the sequence as starting at a chunk boundary; ``initial_state``
    seeds its first chunk only. ``backend``: see BACKENDS.
    """
    impl = get_strategy(strategy)
    check_chunk_size(chunk_size)
    check_ssd_args(x, dt, A, B, C, D, dt_bias, initial_state)
    dt_limit = check_dt_limit(dt_limit)
    _check_runnable(impl, x, backend)
    if x.shape[1] == 0:
        raise ValueError(f"x: expected a sequence length >= 1, got shape {tuple(x.shape)}")
    scan = impl.torch_scan if backend == "torch" else impl.scan
    return scan(x, dt, A, B, C, chunk_size, D, dt_bias, bool(dt_softplus), dt_limit, initial_state)


def ssd_step(state, x, dt, A, B, C, *, D=None, dt_bias=None, dt_softplus=True,
             dt_limit=(0.0, float("inf")), strategy="default", chunk_size=None, position=None, backend="triton"):
    """One recurrent token: updates ``state`` (b,h,p,n fp32) in place and returns y (b,h,p).

    For chunk-local strategies (``independent``) ``chunk_size`` and ``position`` (int or (b,)
    LongTensor: the token's index in its sequence) are required; the state is zeroed before
    a token whose position is a multiple of chunk_size.
    """
    impl = get_strategy(strategy)
    b = x.shape[0] if isinstance(x, torch.Tensor) else None
    check_ssd_args(x, dt, A, B, C, D, dt_bias, state, step=True)
    if state.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"state: expected dtype float32 (or float64), got {state.dtype}")
    dt_limit = check_dt_limit(dt_limit)
    _check_runnable(impl, x, backend)
    reset = None
    if impl.chunk_local:
        if chunk_size is None or position is None:
            raise ValueError(f"chunk_size/position: expected both for strategy {strategy!r}, "
                             f"got chunk_size={chunk_size!r}, position={position!r}")
        check_chunk_size(chunk_size)
        if isinstance(position, torch.Tensor):
            if position.shape not in ((b,), ()) or position.is_floating_point():
                raise ValueError(f"position: expected an int or an integer tensor of shape ({b},), "
                                 f"got {position.dtype} {tuple(position.shape)}")
            pos = position.to(device=x.device).expand(b)
        else:
            if isinstance(position, bool) or not isinstance(position, int) or position < 0:
                raise ValueError(f"position: expected a non-negative int or (b,) tensor, got {position!r}")
            pos = None
        # an int position resets every sequence or none: a Python bool, no tensor ops (host time)
        reset = (position % chunk_size) == 0 if pos is None else (pos % chunk_size) == 0
    step = _ref.ssd_step_reference if backend == "torch" else impl.step
    return step(state, x, dt, A, B, C, D, dt_bias, bool(dt_softplus), dt_limit, reset)
