"""Score an ``outputs.jsonl`` into a ``scores.jsonl``, resumably (the library behind ``gptscore score``).

One scores record per output x aspect, keyed (id, strategy, scorer, aspect): a rerun skips keys
already in the file, and records are written in chunks as they are scored, so an interrupted run
loses at most one chunk and the rerun finishes the rest. Settings that change a record but not its
key (directions, templates, demonstrations, multi_ref, max_length) must stay the same when a file is
resumed, or the run is refused rather than skipping those records as done: write to another file
(or use another aspect) to compare them.
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from pathlib import Path

from tqdm.auto import tqdm

from gptscore_eval.gptscore import F_SCORES, gptscore
from gptscore_eval.distributed import ShardedWriter, check_device, default_device, work_units
from gptscore_eval.records import DIRECTIONS, read_records, run_metadata, settings_by_run
from gptscore_eval.templates import TEMPLATES, get_aspect, load_demos, templates_for


def score_outputs(
    outputs_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    scorer=None,
    aspects=("plain",),
    directions=("ref_hyp", "hyp_ref"),
    template: str | None = None,
    demos: str | None = None,
    multi_ref: str = "mean",
    batch_size: int | str = "auto",
    device: str | None = None,
    dtype: str | None = None,
    max_length: int | None = None,
    chunk_size: int = 128,
    progress: bool = True,
) -> dict:
    """Score every output not yet in ``out_path``; return the summary of the scores file.

    ``scorer`` is a GPTScorer, or a model name (default: the offline SmolLM2) loaded only when
    there is something to score, with ``batch_size``, ``device``, ``dtype`` and ``max_length``.
    Outputs that are empty are not scored; the summary lists them under ``skipped_empty``.
    """
    check_device(device, allow_auto=True)
    outputs = read_records(outputs_path, "outputs").records
    aspects = [get_aspect(a).name for a in aspects]
    templates = templates_for(directions, template)
    for name, items in (("aspects", aspects), ("directions", list(directions))):
        if len(set(items)) != len(items):  # the second would collide with the first's records midway
            raise ValueError(f"{name}: listed twice in {', '.join(items)}")
    demo_list = load_demos(demos) if demos else []
    if isinstance(scorer, str) or scorer is None:
        from gptscore_eval.scorer import DEFAULT_SCORER

        scorer_name = scorer or DEFAULT_SCORER
    else:
        scorer_name = scorer.name
    settings = {
        "scorer": scorer_name, "aspects": aspects, "directions": list(directions), "templates": templates,
        "demos": str(demos) if demos else None, "multi_ref": multi_ref, "max_length": max_length,
    }
    label = _template_label(templates)
    skipped = [r for r in outputs if not r["output"].strip()]
    with ShardedWriter(out_path, "scores", meta=run_metadata(settings)) as writer:
        if writer.written:
            _check_resume(out_path, writer.written, writer.written_meta, settings)
        pending = writer.pending({"id": r["id"], "strategy": r["strategy"], "scorer": scorer_name, "aspect": aspect,
                                  "output": r} for aspect in aspects for r in outputs if r["output"].strip())
        # The chunks one process would score; under torchrun each rank takes every world_size-th one.
        chunks = [(aspect, [t["output"] for t in unit])
                  for aspect, unit in work_units(pending, "aspect", aspects, chunk_size)]
        mine = writer.share(chunks)
        total = sum(len(chunk) for _, chunk in mine)
        if total and not hasattr(scorer, "score"):
            from gptscore_eval.scorer import GPTScorer

            if device is None and writer.world_size > 1:
                device = default_device()
            scorer = GPTScorer(scorer_name, batch_size=batch_size, device=device, dtype=dtype, max_length=max_length)

        def score(records: list[dict], aspect: str) -> list[dict]:
            return gptscore([r["output"] for r in records], [r["reference"] for r in records], scorer=scorer,
                            srcs=[r["prompt"] for r in records], directions=directions, aspect=aspect,
                            demos=demo_list, template=template, multi_ref=multi_ref)

        with tqdm(total=total, unit="output", desc=f"scoring with {scorer_name}",
                  disable=not progress or writer.rank > 0) as bar:
            for aspect, chunk in mine:
                try:
                    scored = list(zip(chunk, score(chunk, aspect)))
                except ValueError:  # one output cannot be scored: keep the others, then name it
                    scored = []
                    for record in chunk:
                        try:
                            scored.append((record, score([record], aspect)[0]))
                        except ValueError as err:
                            _write_scores(writer, scored, scorer_name, aspect, label)
                            raise ValueError(f"{outputs_path}: output id={record['id']!r} strategy="
                                             f"{record['strategy']!r}: {err}") from None
                _write_scores(writer, scored, scorer_name, aspect, label)
                bar.update(len(chunk))
    written = read_records(out_path, "scores", allow_empty=True).records if Path(out_path).exists() else []
    summary = summarize(written, scorer=scorer_name, aspects=aspects)
    summary["written"] = len(pending)  # all ranks together, like the table from the merged file
    summary["skipped_empty"] = [f"{r['id']}/{r['strategy']}" for r in skipped]
    return summary


# What a scores record depends on beyond its key (id, strategy, scorer, aspect).
RESUME_SETTINGS = ("directions", "templates", "demos", "multi_ref", "max_length")


def _check_resume(out_path, written: list[dict], meta: list[dict], settings: dict) -> None:
    """Refuse to add to a file whose records this run would skip as done (same scorer and aspect)
    when they were made with other settings: the file would hold two kinds of score under one key.
    ``meta``: the file's metadata lines, which hold the settings of the runs that wrote it."""
    runs = settings_by_run(meta)
    for r in written:
        skipped = r["scorer"] == settings["scorer"] and r["aspect"] in settings["aspects"]
        old = runs.get(r.get("run_id")) if skipped else None
        for name in RESUME_SETTINGS if old else ():
            if name in old and old[name] != settings[name]:
                raise ValueError(f"{out_path}: holds {settings['scorer']} scores made with {name}={old[name]!r}, "
                                 f"not {settings[name]!r}; use the same settings to resume, or write to another file")


def _write_scores(writer, scored: list[tuple[dict, dict]], scorer_name: str, aspect: str, label: str) -> None:
    for record, result in scored:
        writer.write({"id": record["id"], "strategy": record["strategy"], "scorer": scorer_name, "aspect": aspect,
                      "template": label, "num_chunks": record["num_chunks"], **result})


def _template_label(templates: dict[str, str]) -> str:
    """How the scores record names its template(s): a registered name where there is one."""
    names = {d: next((n for n, t in TEMPLATES.items() if t == text), text) for d, text in templates.items()}
    if len(set(names.values())) == 1:
        return next(iter(names.values()))
    return ";".join(f"{d}={n}" for d, n in names.items())


def summarize(scores: list[dict], *, scorer: str, aspects) -> dict:
    """Mean of every direction and F variant per strategy and aspect, for one scorer."""
    groups = defaultdict(list)
    for record in scores:
        if record["scorer"] == scorer and record["aspect"] in aspects:
            groups[record["strategy"], record["aspect"]].append(record)
    strategies: dict[str, dict] = defaultdict(dict)
    for (strategy, aspect), records in sorted(groups.items()):
        truncated = sum(any(r.get(d, {}).get("truncated") for d in DIRECTIONS) for r in records)
        row = {"n": len(records), "truncated": truncated}
        for field in (*DIRECTIONS, *F_SCORES):
            values = [r[field]["mean"] if field in DIRECTIONS else r[field] for r in records if field in r]
            if values:
                row[field] = statistics.fmean(values)
        strategies[strategy][aspect] = row
    return {"scorer": scorer, "strategies": dict(strategies)}


def format_summary(summary: dict) -> str:
    """The per-strategy table that ``gptscore score`` prints."""
    rows = [(s, a, row) for s, by_aspect in summary["strategies"].items() for a, row in by_aspect.items()]
    fields = [f for f in (*DIRECTIONS, *F_SCORES) if any(f in row for _, _, row in rows)]
    header = ["strategy", "aspect", "n", *fields, "truncated"]
    table = [header] + [
        [s, a, str(row["n"]), *(f"{row[f]:.4f}" if f in row else "-" for f in fields), str(row["truncated"])]
        for s, a, row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"scorer: {summary['scorer']}; {summary.get('written', 0)} records written"]
    if summary.get("skipped_empty"):
        shown = ", ".join(summary["skipped_empty"][:5])
        notes.append(f"skipped {len(summary['skipped_empty'])} empty outputs (not scored): {shown}")
    return "\n".join(lines + notes)
