"""Decode-step ablation: graph-replayed ms/token with each of the decode step's fused forms swapped
back for the launches it replaced, in one process on the same weights.

Variants (comma-separated `--variants`; `all` is the model as shipped):
  all           every fused form
  launch-norms  norms launched on their own (no `NormedRow` left to the projections)
  three-swiglu  SwiGLU as two GEMVs and silu·up (three launches)
  sdpa          one-token attention by SDPA instead of `kernels.decode_attention`
  torch-rotary  the rotary embedding and cache writes by PyTorch instead of `kernels.rotary`
Each variant replaces one name in `bamba.modeling_bamba` for its runs. Runs alternate between
variants (--repeats rounds, the order reversed every other round), so drifts of the GPU's clock
hit all alike. Also prints whether each variant's first 8 greedy tokens equal `all`'s.

    python benchmarks/decode_step.py --layers 32 --lengths 1024,4096 --out runs/decode_step.json   # H200
    python benchmarks/decode_step.py --smoke --out /tmp/decode_step.json   # CPU, eager: checks the script
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

import bamba  # noqa: F401  (on CPU, the Triton interpreter is chosen before triton is imported)
import bamba.modeling_bamba as modeling
from bamba import BambaConfig, BambaForCausalLM
from bamba.generation import GraphedDecoder
from bamba.kernels.gemv import gemv
from bamba.kernels.rms_norm import silu_mul
from model import BAMBA_9B, TINY


def _three_launch_swiglu(x, gate_weight, up_weight, **kw):
    return silu_mul(gemv(x, gate_weight, **kw), gemv(x, up_weight, **kw))


def _sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])


def _torch_rotary(q, k, v, cos, sin, keys, values, slot):
    keys.index_copy_(2, slot, modeling.apply_rotary(k, cos, sin))
    values.index_copy_(2, slot, v)
    return modeling.apply_rotary(q, cos, sin)


VARIANTS = {"all": {}, "launch-norms": {"_deferred": lambda *args: False},
            "three-swiglu": {"gemv_swiglu": _three_launch_swiglu}, "sdpa": {"decode_attention": _sdpa},
            "torch-rotary": {"rotary_step": _torch_rotary}}


def ms_per_token(model, ids, steps, graph):
    """Mean ms per greedy step after 8 warm-up steps, and those 8 tokens."""
    cache = model.new_cache(1, ids.shape[1] + steps + 9)
    with torch.inference_mode():
        logits = model(ids, cache=cache, logits_to_keep=1)
        step = GraphedDecoder(model, cache) if graph else (lambda t: model(t, cache=cache))
        tok, first = logits[:, -1].argmax(-1, keepdim=True), []
        for _ in range(8):
            tok = step(tok)[:, -1].argmax(-1, keepdim=True)
            first.append(int(tok))
        if graph:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            tok = step(tok)[:, -1].argmax(-1, keepdim=True)
        if graph:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps * 1e3, first


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="write results as JSON here")
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, eager steps: checks the script")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--lengths", default=None, help="prompt lengths (default 1024; smoke 20)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 64; smoke 2)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds over the variants (default 3; smoke 1)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")
    device = "cpu" if args.smoke else "cuda"
    config = BambaConfig(**(TINY if args.smoke else BAMBA_9B)).truncated(2 if args.smoke else args.layers)
    model = BambaForCausalLM.from_config(config, strategy="optimized", dtype="float32" if args.smoke else "bfloat16",
                                         device=device, seed=0)
    steps = args.steps or (2 if args.smoke else 64)
    repeats = args.repeats or (1 if args.smoke else 3)
    gen = torch.Generator(device).manual_seed(1)
    rows = []
    for length in [int(s) for s in (args.lengths or ("20" if args.smoke else "1024")).split(",")]:
        ids = torch.randint(0, config.vocab_size, (1, length), device=device, generator=gen)
        times, tokens = {v: [] for v in variants}, {}
        for r in range(repeats):
            for v in (variants if r % 2 == 0 else variants[::-1]):
                saved = {name: getattr(modeling, name) for name in VARIANTS[v]}
                for name, fn in VARIANTS[v].items():
                    setattr(modeling, name, fn)
                try:
                    ms, tokens[v] = ms_per_token(model, ids, steps, graph=not args.smoke)
                finally:
                    for name, fn in saved.items():
                        setattr(modeling, name, fn)
                times[v].append(ms)
        for v in variants:
            same = tokens[v] == tokens[variants[0]]
            rows.append(dict(length=length, variant=v, ms_per_token=times[v], same_tokens_as_first=same))
            print(f"{config.num_hidden_layers} layers, prompt {length}: {v:13s} ms/token "
                  f"{' '.join(f'{t:.3f}' for t in times[v])}  tokens as {variants[0]}: {same}", flush=True)
    meta = dict(benchmark="decode_step", smoke=args.smoke,
                device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                versions=dict(torch=torch.__version__, triton=__import__("triton").__version__),
                layers=config.num_hidden_layers, steps=steps, repeats=repeats)
    with open(args.out, "w") as f:
        json.dump(dict(meta, rows=rows), f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
