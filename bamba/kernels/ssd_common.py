"""Host-side plumbing shared by the Triton SSD strategies (no kernels here)."""
from __future__ import annotations

import functools
import json
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from . import INTERPRET
from .utils import cdiv, next_power_of_2

try:  # host-built tensor descriptors (TMA); without them only the pointer kernels run
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton
    TensorDescriptor = None


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
                    chunk_size, cdiv(l, chunk_size))


def cb_scratch(pr: Prepared) -> torch.Tensor:
    """The C·Bᵀ tiles' buffer: (b, nchunks, g, Q, Q), bf16 for bf16 models and fp32 otherwise.

    The scan multiplies each entry by a decay and dt and rounds the product to the operand dtype
    for its matrix product; no exponential amplifies an entry's error (unlike attention scores),
    so storing it in bf16 adds one rounding of that same size. In exchange the scan reads half the
    bytes, and at large b·l the tiles no longer outgrow the L2 (134 MB in fp32 at 8 × 16k)."""
    dtype = torch.bfloat16 if pr.C.dtype == torch.bfloat16 else torch.float32
    return torch.empty(pr.b, pr.nchunks, pr.g, pr.chunk, pr.chunk, dtype=dtype, device=pr.x.device)


def fused_scratch(pr: Prepared) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Buffers the fused launch fills for the scan: processed dt, its in-chunk cumsum, C·Bᵀ tiles."""
    dt_proc = torch.empty(pr.b, pr.h, pr.nchunks, pr.chunk, dtype=torch.float32, device=pr.x.device)
    return dt_proc, torch.empty_like(dt_proc), cb_scratch(pr)


@functools.lru_cache(maxsize=None)
def sm90_or_newer(device: torch.device) -> bool:
    """Hopper or newer: the tensor-memory accelerator (TMA) and programmatic dependent launch."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def rows_aligned(t: torch.Tensor, strides) -> bool:
    # a zero stride (a batch broadcast by expand) is no row step a descriptor can take
    return t.data_ptr() % 16 == 0 and all(s > 0 and s * t.element_size() % 16 == 0 for s in strides)


def packed_views_ok(pr: Prepared) -> bool:
    """Whether descriptors can read x as (b, l, h·p) and B, C as (b, l, g·n): unit last strides,
    the heads (groups) of a position packed in one row, 16-byte aligned bases and row strides, a
    head's (group's) row at least 16 bytes (a descriptor's narrowest block), and n a power of two
    (so a state-dim block never reaches into the next group)."""
    if TensorDescriptor is None or pr.n & (pr.n - 1):
        return False
    for t, per_row in ((pr.x, pr.h), (pr.B, pr.g), (pr.C, pr.g)):
        if (t.stride(3) != 1 or (per_row > 1 and t.stride(2) != t.shape[3]) or t.shape[3] * t.element_size() < 16
                or not rows_aligned(t, t.stride()[:2])):
            return False
    return True


# TMA tiles are timed with the pointer tiles on GPUs that have the accelerator (sm_90+), for calls
# of at least TMA_MIN_WORK (batch·chunk·head) programs' worth of work: a launch encodes its
# descriptors on the host, which the timed pick (GPU time) does not see and short, host-bound
# calls would pay for.
TMA_MIN_WORK = 2048


def use_tma(pr: Prepared, fixed) -> bool:
    """Whether a launch offers TMA tiles: a fixed cfg asks for them itself (the tests run them
    under the interpreter), tuned calls on sm_90+ GPUs above TMA_MIN_WORK; either way only where
    descriptors can read the inputs."""
    if fixed:
        want = fixed.get("TMA", False)
    else:
        want = pr.b * pr.nchunks * pr.h >= TMA_MIN_WORK and sm90_or_newer(pr.x.device)
    return want and packed_views_ok(pr)


def packed_rows(t: torch.Tensor, block) -> "TensorDescriptor":
    """A descriptor over a (b, l, k, m) tensor viewed as (b, l, k·m) (see packed_views_ok)."""
    return TensorDescriptor(t, [t.shape[0], t.shape[1], t.shape[2] * t.shape[3]], [t.stride(0), t.stride(1), 1], block)


def contiguous_rows(t: torch.Tensor, block) -> "TensorDescriptor":
    """A descriptor over a contiguous tensor viewed as 2-D (rows of its last dim)."""
    return TensorDescriptor(t, [t.numel() // t.shape[-1], t.shape[-1]], [t.shape[-1], 1], block)


def hand_off_dtype(pr: Prepared) -> torch.dtype:
    """dtype of the entering states handed to the chunk scan: the operand dtype of bf16/fp16
    models (the scan multiplies them with C in that dtype anyway, so no precision is lost, and it
    reads half the bytes; mamba_ssm's pipeline does the same), fp32 otherwise."""
    return pr.C.dtype if pr.C.dtype in (torch.bfloat16, torch.float16) else torch.float32


def tile(dim: int, cap: int) -> int:
    """Power-of-two tile >= 16 (tl.dot's minimum) covering dim up to cap."""
    return max(16, min(cap, next_power_of_2(dim)))


def launch_opts(num_warps: int, num_stages: int) -> dict:
    """Compile options for real GPUs; the interpreter ignores them."""
    if INTERPRET:
        return {}
    return {"num_warps": num_warps, "num_stages": num_stages}


# BAMBA_PDL=0 launches every kernel plainly (e.g. for a profiler that does not follow PDL).
PDL = os.environ.get("BAMBA_PDL", "1") != "0"


def dependent_launch(t: torch.Tensor) -> dict:
    """Options for a kernel that starts with utils.wait_for_inputs: on sm_90+ GPUs it is launched
    with programmatic dependent launch (PDL), elsewhere (and under the interpreter) plainly. For
    the small kernels of a decode step, whose launch and ramp-up are a large part of their time."""
    if INTERPRET or not PDL or not sm90_or_newer(t.device):
        return {"PDL": False}
    return {"PDL": True, "launch_pdl": True}


# Chunks at least this long get tuned tiles on GPUs; shorter ones (the tests' tiny shapes)
# and explicit cfg overrides use fixed tiles. Under the interpreter the first candidate runs.
TUNE_MIN_CHUNK = 128

_PICKS: dict = {}


def use_tuned(pr: Prepared, cfg) -> bool:
    return cfg is None and pr.chunk >= TUNE_MIN_CHUNK


def tuning_file() -> Path:
    """Where timed tile choices persist: one JSON per GPU model and Triton version.

    Two tilings of the same exact scan round differently, so every process on a machine must use
    the same choice for results to be reproducible (and outputs of ranks under torchrun to equal a
    single process's): the first process to time a key writes it, later ones read it.
    $BAMBA_CACHE, else $XDG_CACHE_HOME/bamba, else ~/.cache/bamba.
    """
    base = os.environ.get("BAMBA_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bamba"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    name = f"ssd-tiles-{gpu}-triton{triton.__version__}.json".replace(" ", "_").replace("/", "_")
    return Path(base) / name


def _read_tuning() -> dict:
    try:
        return json.loads(tuning_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_tuning(key: str, choice) -> None:
    """Add one choice to the tuning file atomically (a concurrent writer's keys are kept)."""
    path = tuning_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        table = {**_read_tuning(), key: choice}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:  # a read-only home: the choice still holds for this process
        pass


def _bits(outputs) -> tuple:
    """Exact checksums of a tensor's (or a tuple of tensors') bits: a change to any element changes them."""
    def one(t):
        ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        return int(t.contiguous().view(ints).sum(dtype=torch.int64))
    return tuple(map(one, outputs)) if isinstance(outputs, tuple) else (one(outputs),)


def graph_time(fn, warmup=2, rep=10):
    """Median GPU time (ms) of one call of fn replayed from a CUDA graph: the kernels' own time,
    without the host's (a launch's host work, e.g. encoding tensor descriptors, can exceed a short
    kernel's time and would otherwise count against it). triton.testing.do_bench's L2 flush runs
    between replays."""
    from triton.testing import do_bench
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # capture needs a warm-up off the default stream
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: other threads of the process may go on allocating (the default, global mode,
    # would fail their allocations while this one captures)
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        fn()
    return do_bench(graph.replay, warmup=warmup, rep=rep, return_mode="median")


# Tags the tuning file's keys with how candidates were timed, so choices timed another way
# (call by call, host time included, before GPU time) are timed afresh rather than kept.
TIMING = "GPU time"


def pick(key, candidates, run, output=None, same_bits=None):
    """The fastest of ``candidates`` for ``key``: timed once per machine, then a dict lookup.

    Replaces triton.autotune: its dispatcher rebuilds a key from ~45 arguments on every call,
    host time that dominates short sequences. The choice is kept in ``tuning_file()`` so every
    later process makes the same one. ``run(candidate)`` must be repeatable (it may write the
    real outputs and must be CUDA-graph safe). Candidates are timed by GPU time (graph_time).
    The first candidate is used, untimed, under the interpreter and during CUDA-graph capture
    (timing needs syncs). The file's key names the candidate list and the timing method too, so
    a changed list (a new tile added) or a choice timed another way is timed afresh rather than
    left to an older choice.
    ``output()``: the tensor (or tuple of tensors) ``run`` writes. Candidates with equal
    ``same_bits(candidate)`` (all of them when it is None) compute the same products in the same
    order, so each must reproduce the first such candidate's output bit for bit, after its first
    run and after its timed runs. One that does not (racy builds were seen: right at 4k tokens,
    wrong at 8 × 16k) is not chosen.
    """
    i = _PICKS.get(key)
    if i is not None:
        return candidates[i]
    if INTERPRET or len(candidates) == 1 or torch.cuda.is_current_stream_capturing():
        return candidates[0]
    file_key = f"{key!r} of {zlib.crc32(repr(candidates).encode()):08x} by {TIMING}"
    stored = _read_tuning().get(file_key)
    if stored in candidates:
        _PICKS[key] = candidates.index(stored)
        return stored
    times, want = [], {}
    for cand in candidates:
        try:
            run(cand)  # compile (and any nested pick) outside the timing
            first = None if output is None else _bits(output())
            t = graph_time(lambda: run(cand))
            if first is not None:
                ref = want.setdefault(None if same_bits is None else same_bits(cand), first)
                if not first == _bits(output()) == ref:
                    warnings.warn(f"{key!r}: tile {cand} does not reproduce the output of the first tile of its "
                                  "kind; not used")
                    t = float("inf")
            times.append(t)
        except Exception:  # noqa: BLE001  (e.g. a tile that does not fit in shared memory)
            times.append(float("inf"))
    i = min(range(len(candidates)), key=times.__getitem__)
    if times[i] == float("inf"):
        raise RuntimeError(f"no candidate ran for {key!r}")
    _PICKS[key] = i
    _write_tuning(file_key, candidates[i])
    return candidates[i]


def work_bucket(n: int) -> int:
    """Tuning-key size class: sequences of similar length share one tuned choice."""
    return next_power_of_2(max(1, n))
