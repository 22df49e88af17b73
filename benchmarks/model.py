"""Whole-model benchmark: prefill time, decode tokens/s and peak memory per SSD strategy.

The seed study's performance mode: the first 4 layers of Bamba-9B (all Mamba2 layers; its
attention layers are 9, 18, 27) with random bf16 weights, batch 1, prompts of 1k and 4k tokens,
use_cache on (prefill, then recurrent decode, eager and replayed from a CUDA graph) and off
(every token recomputes the whole sequence: a few steps only), next to transformers'
BambaForCausalLM on the same weights.

Timing: CUDA events around each call, median of --repeats after --warmup runs, fresh random
tokens per run. Peak memory: torch.cuda.max_memory_allocated during the call (weights included).
Floors (DESIGN.md §7): prefill >= weight-matmul FLOPs / matmul rate; a decode step >= weight bytes
read / copy bandwidth (both ignore the SSD scan and attention themselves: small at these sizes).

    python benchmarks/model.py --out runs/model.json            # H200
    python benchmarks/model.py --smoke --out /tmp/model.json     # tiny model on CPU: checks the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import bamba  # before transformers: on CPU, the Triton interpreter is chosen before triton is imported
from bamba import BambaConfig, BambaForCausalLM
from bamba.generation import GraphedDecoder

# Bamba-9B (ibm-ai-platform/Bamba-9B config.json); num_hidden_layers is cut by --layers.
BAMBA_9B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, attn_layer_indices=[9, 18, 27], mamba_n_heads=128,
                mamba_d_head=64, mamba_n_groups=1, mamba_d_state=128, mamba_d_conv=4, mamba_expand=2,
                mamba_chunk_size=256, bos_token_id=128000, eos_token_id=128001)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=32, mamba_n_groups=1,
            mamba_d_state=16, mamba_chunk_size=16)
COPY_BYTES_PER_S = 4.26e12  # H200, measured for DESIGN.md §7: the floors are the H200's
MATMUL_FLOPS = 690e12       # H200 bf16, measured for DESIGN.md §7


class Timer:
    """Seconds of one call: CUDA events on GPU (no host overhead in the figure), perf_counter on CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3, out
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out


def peak_memory(device, fn):
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device)


def median_time(timer, fn, repeats, warmup):
    for _ in range(warmup):
        timer(fn)
    return statistics.median(timer(fn)[0] for _ in range(repeats))


def random_ids(vocab, length, device, gen):
    return torch.randint(3, vocab, (1, length), generator=gen).to(device)


def time_decode(timer, step, logits, n):
    """Seconds of each of n greedy steps (argmax of the last logits, then `step`)."""
    times = []
    for _ in range(n):
        seconds, logits = timer(lambda last=logits: step(last[:, -1].argmax(-1, keepdim=True)))
        times.append(seconds)
    return times


def bench_ours(model, length, args, gen):
    """prefill_s; decode_s per token (cache on; eager, and replayed from a CUDA graph on GPUs);
    step_s per token (cache off); peak bytes."""
    timer, device, vocab = Timer(model.device), model.device, model.config.vocab_size
    n = args.decode_tokens

    def prefill():
        cache = model.new_cache(1, length + n)
        return cache, model(random_ids(vocab, length, device, gen), cache=cache, logits_to_keep=1)

    prefill_s = median_time(timer, prefill, args.repeats, args.warmup)
    prefill_peak = peak_memory(device, prefill)

    cache, logits = prefill()
    steps = []
    # the cache of the whole generation included
    decode_peak = peak_memory(device, lambda: steps.extend(
        time_decode(timer, lambda token: model(token, cache=cache), logits, n)))
    decode_s = statistics.median(steps[args.warmup:] or steps)
    graph_s = None
    if device.type == "cuda":  # the first step runs eagerly and captures the graph: not counted
        cache, logits = prefill()
        graph_steps = time_decode(timer, GraphedDecoder(model, cache), logits, n)[1:]
        graph_s = statistics.median(graph_steps[args.warmup:] or graph_steps)

    ids = random_ids(vocab, length, device, gen)
    no_cache = []
    for _ in range(args.no_cache_steps):
        seconds, logits = timer(lambda: model(ids, logits_to_keep=1))
        no_cache.append(seconds)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return {"prefill_s": prefill_s, "prefill_peak_bytes": prefill_peak, "decode_s": decode_s,
            "decode_tokens_per_s": 1.0 / decode_s, "decode_peak_bytes": decode_peak,
            "decode_graph_s": graph_s, "decode_graph_tokens_per_s": 1.0 / graph_s if graph_s else None,
            "no_cache_s_per_token": statistics.median(no_cache),
            "no_cache_tokens_per_s": 1.0 / statistics.median(no_cache)}


def bench_transformers(model, length, args, gen):
    """transformers' BambaForCausalLM on our weights: prefill, and greedy generate for the decode rate."""
    timer, device, vocab = Timer(model.device), model.device, model.config.vocab_size
    n = args.decode_tokens
    with torch.no_grad():
        prefill = lambda: model(random_ids(vocab, length, device, gen), logits_to_keep=1)  # noqa: E731
        prefill_s = median_time(timer, prefill, args.repeats, args.warmup)
        prefill_peak = peak_memory(device, prefill)
        ids = random_ids(vocab, length, device, gen)
        generate = lambda: model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,  # noqa: E731
                                          min_new_tokens=n, do_sample=False, pad_token_id=0)
        total_s, _ = timer(generate)
    decode_s = max(total_s - prefill_s, 0.0) / max(n - 1, 1)
    return {"prefill_s": prefill_s, "prefill_peak_bytes": prefill_peak, "decode_s": decode_s,
            "decode_tokens_per_s": 1.0 / decode_s if decode_s else None, "decode_peak_bytes": None,
            "decode_graph_s": None, "decode_graph_tokens_per_s": None,
            "no_cache_s_per_token": None, "no_cache_tokens_per_s": None}


def load_transformers(model):
    import transformers

    config = transformers.BambaConfig(**{k: v for k, v in model.config.to_dict().items() if k != "dtype"})
    with torch.device(model.device):
        hf = transformers.BambaForCausalLM(config)
    hf.load_state_dict(model.state_dict())
    return hf.to(model.dtype).eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="write results as JSON here")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, short prompts: checks the script")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lengths", default=None, help="prompt lengths (default 1024,4096; smoke 40,70)")
    parser.add_argument("--strategies", default=",".join(bamba.STRATEGIES))
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--decode-tokens", type=int, default=None, help="decode steps timed (default 64; smoke 4)")
    parser.add_argument("--no-cache-steps", type=int, default=None, help="default 3; smoke 2")
    parser.add_argument("--repeats", type=int, default=None, help="default 5; smoke 1")
    parser.add_argument("--warmup", type=int, default=None, help="default 2; smoke 1")
    parser.add_argument("--no-transformers", action="store_true", help="skip transformers' model")
    parser.add_argument("--dtype", default=None, help="default bfloat16 (smoke float32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    smoke = args.smoke
    for name, full, tiny in (("lengths", "1024,4096", "40,70"), ("decode_tokens", 64, 4), ("no_cache_steps", 3, 2),
                             ("repeats", 5, 1), ("warmup", 2, 1), ("dtype", "bfloat16", "float32")):
        if getattr(args, name) is None:
            setattr(args, name, tiny if smoke else full)
    lengths = [int(v) for v in args.lengths.split(",")]
    strategies = [s.strip() for s in args.strategies.split(",")]
    device = torch.device("cpu" if smoke else "cuda")
    if not smoke and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (use --smoke on CPU)")

    dims = TINY if smoke else BAMBA_9B
    config = BambaConfig(**dims).truncated(min(args.layers, dims["num_hidden_layers"]))
    model = BambaForCausalLM.from_config(config, dtype=args.dtype, device=device, seed=args.seed)
    # Per token, prefill multiplies by every layer weight; only the last position goes through lm_head.
    # A decode step reads every layer weight and lm_head once (the embedding row gather is negligible).
    layer_params = sum(p.numel() for p in model.model.layers.parameters())
    head_params = model.lm_head.weight.numel()
    read_bytes = (layer_params + head_params) * model.lm_head.weight.element_size()
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    with torch.inference_mode():
        for strategy in strategies:
            model.set_strategy(strategy, args.chunk_size)
            for length in lengths:
                rows.append({"impl": "bamba", "strategy": strategy, "length": length,
                             **bench_ours(model, length, args, gen)})
                print(_row(rows[-1]), flush=True)
    if not args.no_transformers:
        hf = load_transformers(model)
        for length in lengths:
            try:
                rows.append({"impl": "transformers", "strategy": "torch", "length": length,
                             **bench_transformers(hf, length, args, gen)})
            except torch.cuda.OutOfMemoryError:
                rows.append({"impl": "transformers", "strategy": "torch", "length": length, "error": "out of memory"})
                torch.cuda.empty_cache()
            print(_row(rows[-1]), flush=True)
        del hf
    floors = {f"prefill_floor_s@{n}": 2 * (layer_params * n + head_params) / MATMUL_FLOPS for n in lengths}
    floors["decode_floor_s"] = read_bytes / COPY_BYTES_PER_S
    result = {
        "benchmark": "model", "smoke": smoke,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "versions": {"torch": torch.__version__, "triton": _version("triton"),
                     "transformers": _version("transformers")},
        "config": config.to_dict(), "dtype": args.dtype, "chunk_size": model.chunk_size,
        "decode_read_bytes": read_bytes,
        "floors": floors, "settings": {k: v for k, v in vars(args).items() if k != "out"}, "rows": rows,
    }
    print()
    print(table(rows))
    print(f"H200 floors: decode step >= {floors['decode_floor_s'] * 1e3:.3f} ms (weights / copy bandwidth); "
          + ", ".join(f"prefill@{n} >= {floors[f'prefill_floor_s@{n}'] * 1e3:.2f} ms" for n in lengths))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    return result


COLUMNS = [("impl", "{}"), ("strategy", "{}"), ("length", "{}"), ("prefill_s", "ms"), ("prefill_peak_bytes", "GB"),
           ("decode_s", "ms"), ("decode_tokens_per_s", "{:.1f}"), ("decode_graph_s", "ms"),
           ("decode_graph_tokens_per_s", "{:.1f}"), ("no_cache_s_per_token", "ms"),
           ("no_cache_tokens_per_s", "{:.2f}")]


def _cell(value, fmt):
    if value is None:
        return "-"
    if fmt == "ms":
        return f"{value * 1e3:.2f}"
    if fmt == "GB":
        return f"{value / 1e9:.2f}"
    return fmt.format(value)


def _row(row):
    if "error" in row:
        return f"{row['impl']:>12} {row['strategy']:>12} {row['length']:>12}  {row['error']}"
    return " ".join(f"{_cell(row.get(name), fmt):>{max(len(name), 12)}}" for name, fmt in COLUMNS)


def table(rows):
    header = " ".join(f"{name:>{max(len(name), 12)}}" for name, _ in COLUMNS)
    note = "(times in ms, memory in GB; tokens/s for batch 1)"
    return "\n".join([note, header, *map(_row, rows)])


def _version(name):
    try:
        return __import__(name).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
