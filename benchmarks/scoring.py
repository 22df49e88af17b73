"""Throughput of GPTScorer against a naive loop and against the forward-FLOPs ceiling.

    python benchmarks/scoring.py --out scoring.json            # H200: ~1B and ~8B Llama shapes, bf16
    python benchmarks/scoring.py --smoke --out smoke.json      # CPU: a tiny shape, a few pairs

Scorers are random-weight Llama-shaped models built from their dimensions (nothing downloaded);
the tokenizer is a byte-level BPE trained here on the project's prompt sets, and the pairs are
(reference, another reference) from data/qa_*.jsonl: answers of ~10 to ~1000 tokens.

Rows per shape:
* ``batched``        GPTScorer, bf16, sorted and padded batches, no prefix.
* ``prefix reuse``   the same pairs after an aspect instruction + 3 demonstrations (~250 tokens),
                     whose KV cache is computed once; ``prefix no reuse`` recomputes it per pair.
* ``naive fp32``     the upstream GPTScore way: one pair at a time, fp32, full logits and a full
                     log-softmax over every position (timed on a subset).

Ceiling: the time the forward FLOPs would take at the matmul rate measured here (bf16, 8192^3):
FLOPs = 2 x (non-embedding parameters) x (tokens run through the layers) + 2 x (LM-head
parameters) x (target tokens: the head runs only on them). Attention-score FLOPs (~2% at these
lengths) are not counted, which makes the ceiling slightly optimistic for us.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from gptscore_eval.scorer import GPTScorer, shared_prefix_length
from gptscore_eval.templates import DEFAULT_TEMPLATE, build_prefix, get_aspect, load_demos

ROOT = Path(__file__).resolve().parent.parent

# Llama-3.2-1B and Llama-3-8B dimensions; "tiny" is for --smoke.
SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048, tie_word_embeddings=False),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """Measured FLOP/s of an n^3 matmul: median of 10 runs after warm-up."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(13):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def texts() -> list[str]:
    references = []
    for path in sorted((ROOT / "data").glob("qa_*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                if isinstance(record.get("reference"), str):
                    references.append(record["reference"])
    if not references:
        raise SystemExit("no references found in data/qa_*.jsonl")
    return references


def train_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")


def make_pairs(references: list[str], n: int, seed: int) -> tuple[list[str], list[str]]:
    """(context, target) = (a reference, another reference), n pairs in random order."""
    rng = random.Random(seed)
    pairs = [(references[i], references[(i + shift) % len(references)])
             for shift in range(1, 1 + n // len(references) + 1) for i in range(len(references))]
    rng.shuffle(pairs)
    contexts, targets = zip(*pairs[:n])
    return list(contexts), list(targets)


def build_model(shape: str, device: torch.device, dtype: torch.dtype, max_length: int) -> LlamaForCausalLM:
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=max_length)
    torch.manual_seed(0)
    with torch.device(device):
        return LlamaForCausalLM._from_config(config, dtype=dtype).eval()


def parameter_counts(model) -> dict[str, int]:
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    body = sum(p.numel() for name, p in model.named_parameters() if p is not embed and p is not head)
    return {"total": sum(p.numel() for p in model.parameters()), "body": body, "head": head.numel()}


def workload(scorer: GPTScorer, contexts, targets, prefix: str, reuse: bool) -> dict[str, int]:
    """Tokens through the layers and target tokens through the head, as ``score`` runs them."""
    encodings = scorer.encode(contexts, targets, DEFAULT_TEMPLATE, prefix)
    shared = shared_prefix_length(encodings) if prefix and reuse else 0
    return {
        "tokens": sum(len(e.ids) for e in encodings),  # what the pairs hold (throughput is counted on this)
        "forward_tokens": shared + sum(len(e.ids) - shared for e in encodings),
        "target_tokens": sum(len(e.ids) - e.first_target for e in encodings),
    }


def time_batched(scorer: GPTScorer, contexts, targets, prefix: str, reuse: bool) -> float:
    scorer.score(contexts[:8], targets[:8], prefix=prefix, reuse_prefix=reuse)  # warm-up
    sync(scorer.device)
    start = time.perf_counter()
    scorer.score(contexts, targets, prefix=prefix, reuse_prefix=reuse)
    sync(scorer.device)
    return time.perf_counter() - start


@torch.inference_mode()
def time_naive(model, scorer: GPTScorer, contexts, targets) -> float:
    """Upstream GPTScore: one pair at a time, full fp32 logits and log-softmax at every position."""
    encodings = scorer.encode(contexts, targets, DEFAULT_TEMPLATE, "")
    model(torch.tensor([encodings[0].ids], device=scorer.device))  # warm-up
    sync(scorer.device)
    start = time.perf_counter()
    for enc in encodings:
        ids = torch.tensor([enc.ids], device=scorer.device)
        logprobs = model(ids).logits[0, :-1].float().log_softmax(-1)
        picked = logprobs.gather(1, ids[0, 1:, None])[enc.first_target - 1 :]
        float(picked.mean())
    sync(scorer.device)
    return time.perf_counter() - start


def row(shape, mode, n_pairs, load, seconds, params, rate, device) -> dict:
    flops = 2 * params["body"] * load["forward_tokens"] + 2 * params["head"] * load["target_tokens"]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "shape": shape, "mode": mode, "pairs": n_pairs, **load, "seconds": seconds,
        "tokens_per_s": load["tokens"] / seconds, "pairs_per_s": n_pairs / seconds,
        "flops": flops, "ceiling_s": flops / rate, "fraction_of_ceiling": flops / rate / seconds,
        "peak_memory_bytes": peak,
    }


def bench_shape(shape: str, args, tokenizer, contexts, targets, prefix, rate, device) -> list[dict]:
    dtype = torch.float32 if args.smoke else torch.bfloat16
    model = build_model(shape, device, dtype, args.max_length)
    params = parameter_counts(model)
    print(f"{shape}: {params['total'] / 1e6:,.1f}M parameters ({params['body'] / 1e6:,.1f}M in the layers)", flush=True)
    scorer = GPTScorer(model, tokenizer=tokenizer, device=device, dtype=dtype, batch_size=args.batch_size,
                       max_length=args.max_length, name=shape)
    rows = []
    modes = (("batched", "", False), ("prefix reuse", prefix, True), ("prefix no reuse", prefix, False))
    for mode, pre, reuse in modes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = time_batched(scorer, contexts, targets, pre, reuse)
        rows.append(row(shape, mode, len(contexts), workload(scorer, contexts, targets, pre, reuse), seconds,
                        params, rate, device))
        print_row(rows[-1])
    naive_c, naive_t = contexts[: args.naive_pairs], targets[: args.naive_pairs]
    model.float()  # upstream runs fp32; the scorer's copy is the same module, done with it now
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_naive(model, scorer, naive_c, naive_t)
    load = workload(scorer, naive_c, naive_t, "", False)
    load["target_tokens"] = load["forward_tokens"]  # the naive loop runs the head on every position
    rows.append(row(shape, "naive fp32", len(naive_c), load, seconds, params, rate, device))
    print_row(rows[-1])
    del model, scorer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def print_row(r: dict) -> None:
    print(f"  {r['mode']:<16} {r['pairs']:>5} pairs {r['tokens']:>8} tok {r['seconds']:>8.3f} s "
          f"{r['tokens_per_s']:>10.0f} tok/s {r['pairs_per_s']:>8.2f} pairs/s "
          f"{100 * r['fraction_of_ceiling']:>5.1f}% of ceiling", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument("--shapes", default="1b,8b", help="comma-separated: " + ", ".join(SHAPES))
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--naive-pairs", type=int, default=16)
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shape, few pairs: checks the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.shapes, args.pairs, args.naive_pairs = "tiny", min(args.pairs, 24), min(args.naive_pairs, 4)
    if not args.smoke and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (use --smoke on CPU)")
    device = torch.device("cpu" if args.smoke else "cuda")

    references = texts()
    tokenizer = train_tokenizer(references, 2048 if args.smoke else 32000)
    contexts, targets = make_pairs(references, args.pairs, args.seed)
    prefix = build_prefix(get_aspect("consistency"), load_demos("qa"), "ref_hyp", DEFAULT_TEMPLATE)
    rate = matmul_rate(device, torch.float32 if args.smoke else torch.bfloat16, 1024 if args.smoke else 8192)
    print(f"device {device}: measured matmul rate {rate / 1e12:.3f} TFLOP/s", flush=True)

    rows = []
    for shape in args.shapes.split(","):
        rows += bench_shape(shape, args, tokenizer, contexts, targets, prefix, rate, device)
    for shape in {r["shape"] for r in rows}:
        by_mode = {r["mode"]: r for r in rows if r["shape"] == shape}
        speedup = by_mode["batched"]["tokens_per_s"] / by_mode["naive fp32"]["tokens_per_s"]
        print(f"{shape}: batched is {speedup:.1f}x the naive loop in tokens/s")
    result = {
        "benchmark": "gptscore scoring throughput",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "python": platform.python_version()},
        "args": {k: str(v) for k, v in vars(args).items()},
        "matmul_flops_per_s": rate,
        "prefix_tokens": len(tokenizer(prefix)["input_ids"]),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
