"""The whole experiment on the embedded offline defaults: generate with every strategy, score
with the default scorer, write the report (the library behind ``gptscore demo``).

Every step appends resumably to files in ``out_dir``, so an interrupted demo continues where it
stopped. The model is ``bamba-tiny`` (data/models/bamba-tiny: 17M parameters, distilled from
SmolLM2-135M-Instruct, see data/models/README.md); ``tiny-random`` runs the same pipeline on
seeded random weights, whose answers are noise.
"""

from __future__ import annotations

import os
from pathlib import Path

from gptscore_eval.records import read_records

DEMO_DATA = Path(__file__).resolve().parent.parent / "data" / "demo.jsonl"
STRATEGIES = ("default", "optimized", "independent")


def run_demo(out_dir: str | os.PathLike, *, model: str = "bamba-tiny", data: str | os.PathLike = DEMO_DATA,
             limit: int | None = None, max_new_tokens: int = 48, chunk_size: int = 64, scorer: str | None = None,
             n_resamples: int = 9999, echo=print) -> Path:
    """Run generate -> score -> report into ``out_dir``; return the path of report.md."""
    from gptscore_eval.generate import generate_outputs  # imports bamba before transformers
    from gptscore_eval.report import Options, write_report
    from gptscore_eval.scoring import format_summary, score_outputs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs, scores = out_dir / "outputs.jsonl", out_dir / "scores.jsonl"
    n = len(read_records(data, "prompts").records[:limit])
    echo(f"1/3 generating {n} prompts x {len(STRATEGIES)} strategies with {model} -> {outputs}")
    # One batch per strategy, in fp32: the checkpoint is bf16, whose rounding differs with the
    # batch's padding and can flip a greedy choice between near-equal tokens.
    generate_outputs(model, data, outputs, strategies=STRATEGIES, max_new_tokens=max_new_tokens,
                     chunk_size=chunk_size, limit=limit, batch_size=n, dtype="float32")
    echo(f"2/3 scoring with {scorer or 'the default scorer'} -> {scores}")
    echo(format_summary(score_outputs(outputs, scores, scorer=scorer)))
    echo(f"3/3 writing the report -> {out_dir}")
    # Strategies whose output was empty for some prompt are not scored there: analyse the rest.
    summary = write_report([scores, outputs], out_dir, Options(allow_unpaired=True, n_resamples=n_resamples))
    for sentence in summary["sentences"]:
        echo(sentence)
    return out_dir / "report.md"
