"""The ``gptscore`` command: a thin shell over the library. Each command parses its options and
calls the functions that analysis code calls too. User errors print one line and exit 1."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from gptscore_eval import records
from gptscore_eval.templates import ASPECTS, TEMPLATES  # no torch: cheap enough for --help

# Errors that are the user's to fix (bad files, bad options, paths that cannot be read or made,
# a full disk): one line, no traceback.
USER_ERRORS = (ValueError, OSError)


def user_errors(command):
    """Turn user errors raised by library code into a one-line message and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as err:
            raise click.ClickException(str(err)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gptscore-eval")
def main() -> None:
    """Make Bamba's SSD kernels faster, then prove with GPTScore that outputs did not get worse."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@user_errors
def validate(files: tuple[str, ...]) -> None:
    """Check prompt, output or score files line by line; print what they hold."""
    for path in files:
        f = records.read_records(path)
        click.echo(f"{path}: {len(f.records)} {f.kind.name} records, {len(f.meta)} run metadata lines")
        if f.kind is records.PROMPTS:
            buckets = f.counts("num_chunks")
            if any(b is not None for b in buckets):
                shown = ", ".join(f"{b}: {n}" for b, n in sorted(buckets.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))
                click.echo(f"  by num_chunks: {shown}")
        else:
            for strategy, n in sorted(f.counts("strategy").items()):
                click.echo(f"  {strategy}: {n}")
            if f.kind is records.SCORES:
                fields = [d for d in (*records.DIRECTIONS, *records.F_VARIANTS) if any(d in r for r in f.records)]
                click.echo(f"  scorers: {', '.join(sorted(f.counts('scorer')))}; aspects: "
                           f"{', '.join(sorted(f.counts('aspect')))}; fields: {', '.join(fields)}")


def _analysis_options(command):
    """Options shared by `report` and `plot`: which scores to analyse and how."""
    options = [
        click.option("--baseline", help="Strategy to compare against [default: 'default' if present]."),
        click.option("--field", type=click.Choice(records.DIRECTIONS + records.F_VARIANTS),
                     help="Score field [default: avg_f if present, else ref_hyp]."),
        click.option("--scorer", help="Scorer to analyse when the file holds several."),
        click.option("--aspect", help="Aspect to analyse when the file holds several."),
        click.option("--allow-unpaired", is_flag=True, help="Analyse only ids scored for every strategy."),
        click.option("--confidence", default=0.95, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True)),
        click.option("--resamples", "n_resamples", default=9999, show_default=True, type=click.IntRange(min=99),
                     help="Bootstrap resamples and randomization rounds."),
        click.option("--seed", default=0, show_default=True, type=int),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for the report.")
@click.option("--alpha", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True))
@_analysis_options
@user_errors
def report(files: tuple[str, ...], out: str, **options) -> None:
    """Summarize scores.jsonl and/or outputs.jsonl: summary.json, report.md and figures in OUT."""
    from gptscore_eval.report import Options, write_report  # loads scipy and matplotlib: only here

    summary = write_report(files, out, Options(**options))
    for sentence in summary["sentences"]:
        click.echo(sentence)
    click.echo(f"wrote {out}/report.md, {out}/summary.json and {len(summary['figures'])} figures")


@main.command()
@click.argument("kind")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Figure file; .png, .svg or .pdf.")
@_analysis_options
@user_errors
def plot(kind: str, files: tuple[str, ...], out: str, **options) -> None:
    """Draw one figure KIND from scores.jsonl and/or outputs.jsonl.

    From scores: distribution, means, by-chunks, differences. From outputs: latency, ttft,
    inter-token, throughput, memory.
    """
    from gptscore_eval.report import Options, draw

    click.echo(f"wrote {draw(kind, files, out, Options(**options))}")


@main.command()
@click.option("--model", "model_name", required=True,
              help="Bamba checkpoint directory, Hub id, bamba-tiny (shipped, trained) or tiny-random.")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Prompt set (JSONL).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="outputs.jsonl to append to.")
@click.option("--strategies", default="default", show_default=True,
              help="Comma-separated SSD strategies, e.g. default,optimized,independent.")
@click.option("--max-new-tokens", required=True, type=click.IntRange(min=1))
@click.option("--num-layers", type=click.IntRange(min=1), help="Keep only the first N layers.")
@click.option("--chunk-size", type=int, help="SSD chunk size (power of two >= 16); default: the checkpoint's.")
@click.option("--no-cache", is_flag=True, help="Recompute the whole sequence at every step.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first K prompts.")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--device", help="cuda, cuda:1, cpu; default: cuda if available.")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "bfloat16", "float16", "float32"]), help="auto: the checkpoint's.")
@click.option("--seed", default=0, show_default=True, type=int, help="Sampling seed (prompt i uses seed + i).")
@click.option("--sample", is_flag=True, help="Sample instead of greedy decoding.")
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--top-k", type=click.IntRange(min=1))
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True))
@click.option("--chat-template/--no-chat-template", default=None,
              help="Wrap each prompt in the tokenizer's chat template; default: when it has one.")
@click.option("--backend", type=click.Choice(["triton", "torch"]),
              help="SSD kernels (triton) or their PyTorch definitions (torch); default: triton on GPU, torch on CPU.")
@user_errors
def generate(model_name, data, out, strategies, max_new_tokens, num_layers, chunk_size, no_cache, limit, batch_size,
             device, dtype, seed, sample, temperature, top_k, top_p, chat_template, backend) -> None:
    """Generate an output for every prompt x strategy (resumable: done pairs are skipped)."""
    from gptscore_eval.generate import generate_outputs  # imports torch: only when generating

    summary = generate_outputs(
        model_name, data, out, strategies=strategies, max_new_tokens=max_new_tokens, num_layers=num_layers,
        chunk_size=chunk_size, use_cache=not no_cache, limit=limit, batch_size=batch_size, device=device,
        dtype=None if dtype == "auto" else dtype, seed=seed, do_sample=sample, temperature=temperature,
        top_k=top_k, top_p=top_p, chat_template=chat_template, backend=backend)
    if _first_rank():
        click.echo(f"{out}: wrote {summary['written']} records, skipped {summary['skipped']} already there")


@main.command()
@click.argument("outputs", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False),
              help="Scores file to append to; default: beside OUTPUTS, its name with 'outputs' made 'scores' "
                   "(outputs.jsonl -> scores.jsonl), or NAME.scores.jsonl.")
@click.option("--scorer", help="Scorer LM: a Hub id or a local directory; default: SmolLM2-135M-Instruct, offline.")
@click.option("--aspects", default="plain", show_default=True,
              help=f"Comma-separated, from: {', '.join(ASPECTS)}.")
@click.option("--directions", default="ref_hyp,hyp_ref", show_default=True,
              help="Comma-separated: ref_hyp, hyp_ref, src_hyp.")
@click.option("--template", help=f"{' or '.join(TEMPLATES)}, or a string with {{context}} ... {{target}}; "
              "default: per direction.")
@click.option("--demos", help="Demonstrations: a JSON file, or 'qa' for the shipped ones.")
@click.option("--multi-ref", default="mean", show_default=True, type=click.Choice(["mean", "max"]))
@click.option("--batch-size", default="auto", show_default=True, help="Pairs per batch, or auto.")
@click.option("--max-length", type=click.IntRange(min=2), help="Longest input in tokens; default: the scorer's.")
@click.option("--device", help="cuda, cuda:1, cpu, or auto (spread over all GPUs); default: cuda if available.")
@click.option("--dtype", help="bfloat16, float16, float32; default: bfloat16 on GPU, float32 on CPU.")
@user_errors
def score(outputs, out, scorer, aspects, directions, template, demos, multi_ref, batch_size, max_length, device,
          dtype) -> None:
    """GPTScore every output in OUTPUTS into --out (resumable: scored records are skipped)."""
    from gptscore_eval.scoring import format_summary, score_outputs  # imports torch: only when scoring

    summary = score_outputs(
        outputs, out or default_scores_path(outputs), scorer=scorer, aspects=_comma_list(aspects),
        directions=_comma_list(directions), template=template, demos=demos, multi_ref=multi_ref,
        batch_size=batch_size, device=device, dtype=dtype, max_length=max_length)
    if _first_rank():
        click.echo(format_summary(summary))


def _first_rank() -> bool:
    """Under torchrun every rank returns the same summary (counts of the whole run): one prints it."""
    from gptscore_eval.distributed import world

    return world()[0] == 0


def default_scores_path(outputs: str) -> Path:
    """Where `score` writes without --out: one scores file per outputs file, beside it."""
    path = Path(outputs)
    name = path.name.replace("outputs", "scores") if "outputs" in path.name else f"{path.stem}.scores.jsonl"
    return path.with_name(name)


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"expected a comma-separated list, got {text!r}")
    return items


@main.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for outputs.jsonl, scores.jsonl and the report.")
@click.option("--model", default="bamba-tiny", show_default=True,
              help="bamba-tiny (shipped, trained), tiny-random, or a Bamba checkpoint directory.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first K demo prompts.")
@click.option("--max-new-tokens", default=48, show_default=True, type=click.IntRange(min=1))
@click.option("--resamples", "n_resamples", default=9999, show_default=True, type=click.IntRange(min=99))
@user_errors
def demo(out, model, limit, max_new_tokens, n_resamples) -> None:
    """The whole experiment offline: generate with every strategy, score, report."""
    from gptscore_eval.demo import run_demo

    report = run_demo(out, model=model, limit=limit, max_new_tokens=max_new_tokens, n_resamples=n_resamples,
                      echo=click.echo)
    click.echo(f"report: {report}")


if __name__ == "__main__":
    sys.exit(main())
