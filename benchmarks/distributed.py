"""Speed-up of `gptscore generate` and `gptscore score` across the GPUs of one node (torchrun).

Builds a random-weight Bamba checkpoint and a random-weight Llama scorer (byte-level tokenizer,
nothing downloaded), then runs each command on the same prompts with 1 process and with N
processes (one GPU each) and reports wall-clock time (model loading included; Triton compilation
excluded by an untimed warm-up), records per second and the speed-up, and checks that the
N-process files hold exactly the records of the 1-process files.

    python3 benchmarks/distributed.py --gpus 2 --out dist.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bamba  # noqa: E402,F401  (before transformers, which may import triton)
from gptscore_eval import records  # noqa: E402


# (Bamba hidden, layers, mamba heads; Llama scorer hidden, layers): realistic on GPU, tiny for --smoke.
SIZES = {"gpu": (2048, 8, 64, 2048, 16), "smoke": (64, 2, 4, 64, 2)}


def build_checkpoints(workdir: Path, seed: int, smoke: bool) -> tuple[Path, Path]:
    from transformers import BambaConfig, BambaForCausalLM, LlamaConfig, LlamaForCausalLM

    from bamba.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model_dir, scorer_dir = workdir / "bamba", workdir / "scorer"
    hidden, layers, heads, scorer_hidden, scorer_layers = SIZES["smoke" if smoke else "gpu"]
    with torch.device("cpu" if smoke else "cuda"):
        # mamba heads x head dim = 2 x hidden (Bamba's expand factor).
        model = BambaForCausalLM(BambaConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 11 // 4,
            num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=4, attn_layer_indices=[1],
            mamba_n_heads=heads, mamba_d_head=2 * hidden // heads, mamba_d_state=128 if not smoke else 16,
            mamba_n_groups=1, mamba_chunk_size=256 if not smoke else 64, max_position_embeddings=8192,
            tie_word_embeddings=False))
        model.to(torch.bfloat16 if not smoke else torch.float32).save_pretrained(model_dir)
        del model
        scorer = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=scorer_hidden, intermediate_size=4 * scorer_hidden,
            num_hidden_layers=scorer_layers, num_attention_heads=16, num_key_value_heads=8,
            max_position_embeddings=8192))
        scorer.to(torch.bfloat16 if not smoke else torch.float32).save_pretrained(scorer_dir)
        del scorer
    for directory in (model_dir, scorer_dir):
        tokenizer.save_pretrained(directory)
    return model_dir, scorer_dir


def timed(command: list[str], processes: int) -> float:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                "-m", "gptscore_eval.cli"]
    # One CPU thread per process in every run (torchrun's default for several processes), so CPU
    # reductions run in the same order whatever the number of processes.
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(launcher + command, check=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


def comparable(path: Path, ignore=("run_id", "timings", "peak_memory_bytes", "device")) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ignore} for r in records.read_records(path).records]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny models, 2 CPU processes (gloo): checks the script")
    args = parser.parse_args(argv)
    if args.smoke:
        args.gpus, args.prompts, args.max_new_tokens = 2, 4, 3
    elif args.gpus < 2 or torch.cuda.device_count() < args.gpus:
        sys.exit(f"needs {max(args.gpus, 2)} GPUs (--gpus), found {torch.cuda.device_count()} (use --smoke on CPU)")
    with tempfile.TemporaryDirectory(prefix="dist-bench-") as work:  # checkpoints and records: removed after
        run(args, Path(work))


def run(args, work: Path) -> None:
    model_dir, scorer_dir = build_checkpoints(work, args.seed, args.smoke)
    data = ROOT / "data" / "qa_256.jsonl"
    generate_args = ["--model", str(model_dir), "--data", str(data), "--strategies", "default,independent",
                     "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
                     "--seed", str(args.seed)]
    # Compile the Triton kernels once, untimed, so neither timed run pays for it.
    timed(["generate", *generate_args, "--limit", "2", "--out", str(work / "warm-up.jsonl")], 1)
    rows = []
    for processes in (1, args.gpus):
        outputs, scores = work / f"outputs-{processes}.jsonl", work / f"scores-{processes}.jsonl"
        generate_s = timed(["generate", *generate_args, "--limit", str(args.prompts), "--out", str(outputs)],
                           processes)
        # Every run scores the 1-process outputs, so the score files are comparable.
        score_s = timed(["score", str(work / "outputs-1.jsonl"), "--scorer", str(scorer_dir),
                         "--aspects", "plain,consistency,fluency,relevance", "--out", str(scores)], processes)
        n_out, n_scores = len(records.read_records(outputs).records), len(records.read_records(scores).records)
        rows.append({"processes": processes, "generate_s": generate_s, "generate_records": n_out,
                     "score_s": score_s, "score_records": n_scores})

    same_outputs = comparable(work / "outputs-1.jsonl") == comparable(work / f"outputs-{args.gpus}.jsonl")
    same_scores = comparable(work / "scores-1.jsonl") == comparable(work / f"scores-{args.gpus}.jsonl")
    result = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch": torch.__version__, "args": vars(args), "rows": rows,
        "same_outputs": same_outputs, "same_scores": same_scores,
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).write_text(json.dumps(result, indent=2))

    base = rows[0]
    print(f"\n{result['gpu']}, torch {torch.__version__}; {args.prompts} prompts x 2 strategies, "
          f"{args.max_new_tokens} new tokens, batch {args.batch_size}")
    print("| processes | generate s | outputs/s | speed-up | score s | scores/s | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['processes']} | {r['generate_s']:.1f} | {r['generate_records'] / r['generate_s']:.2f} | "
              f"{base['generate_s'] / r['generate_s']:.2f}x | {r['score_s']:.1f} | "
              f"{r['score_records'] / r['score_s']:.2f} | {base['score_s'] / r['score_s']:.2f}x |")
    print(f"records identical to the 1-process run: outputs {same_outputs}, scores {same_scores}")


if __name__ == "__main__":
    main()
