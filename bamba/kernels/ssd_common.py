"""Host-side plumbing shared by the Triton SSD strategies (no kernels here)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from . import INTERPRET


@dataclass
class Prepared:
    x: torch.Tensor
    dt: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None
    dt_bias: torch.Tensor | None
    initial_state: torch.Tensor | None
    out_dtype: torch.dtype
    b: int
    l: int
    h: int
    p: int
    g: int
    n: int
    chunk: int
    nchunks: int


def prepare(x, dt, A, B, C, chunk_size, D, dt_bias, initial_state) -> Prepared:
    """Kernels compute in fp32 with operands in the input dtype; fp64 inputs run as fp32."""
    out_dtype = x.dtype
    if x.dtype == torch.float64:
        x, B, C = x.float(), B.float(), C.float()
    if dt.dtype == torch.float64:
        dt = dt.float()
    A = A.float().contiguous()
    D = None if D is None else D.float().contiguous()
    dt_bias = None if dt_bias is None else dt_bias.float().contiguous()
    if initial_state is not None:
        initial_state = initial_state.float().contiguous()
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    return Prepared(x, dt, A, B, C, D, dt_bias, initial_state, out_dtype, b, l, h, p, g, n,
                    chunk_size, triton.cdiv(l, chunk_size))


def tile(dim: int, cap: int) -> int:
    """Power-of-two tile >= 16 (tl.dot's minimum) covering dim up to cap."""
    return max(16, min(cap, triton.next_power_of_2(dim)))


def launch_opts(num_warps: int, num_stages: int) -> dict:
    """Compile options for real GPUs; the interpreter ignores them."""
    return {} if INTERPRET else {"num_warps": num_warps, "num_stages": num_stages}


# Chunks at least this long get autotuned tiles on GPUs; shorter ones (the tests' tiny shapes)
# and explicit cfg overrides use fixed tiles. Under the interpreter only the first config runs.
TUNE_MIN_CHUNK = 128


def use_tuned(pr: Prepared, cfg) -> bool:
    return cfg is None and pr.chunk >= TUNE_MIN_CHUNK


def autotune(kernel, configs, key):
    return triton.autotune(configs=configs[:1] if INTERPRET else configs, key=key)(kernel)
