"""From record files to conclusions: ``summary.json``, ``report.md`` and figures (``gptscore report``),
or one figure (``gptscore plot``).

Inputs are a scores file, an outputs file, or both (in any order; the kind is read from the
records). Scores give the quality half (``stats.analyse``), outputs the performance half
(``perf.performance``) and, for scores without ``num_chunks``, the prompt-length buckets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from gptscore_eval import plots
from gptscore_eval.perf import METRICS, measured, performance
from gptscore_eval.records import OUTPUTS, SCORES, RecordFile, read_records, settings_by_run
from gptscore_eval.stats import NO_CI, ScoreSet, analyse, select_scores

# The p-value that the report's sentences state, and why: sign-flip randomization is valid at
# any sample size, where the shifted bootstrap runs a little liberal for small n.
HEADLINE_TEST = "p_randomization"
TEST_NAMES = {"p_bootstrap": "paired bootstrap", "p_randomization": "approximate randomization",
              "p_wilcoxon": "Wilcoxon signed-rank"}
FIGURE_FORMATS = ("png", "svg")  # every report figure, in both


@dataclass(frozen=True)
class Options:
    """How to select and analyse the scores; the defaults are the CLI's."""

    baseline: str | None = None
    field: str | None = None
    scorer: str | None = None
    aspect: str | None = None
    allow_unpaired: bool = False
    confidence: float = 0.95
    n_resamples: int = 9999
    seed: int = 0
    alpha: float = 0.05

    @property
    def bootstrap(self) -> dict:
        return {"confidence": self.confidence, "n_resamples": self.n_resamples, "seed": self.seed}


@dataclass
class Inputs:
    scores: RecordFile | None
    outputs: RecordFile | None


def load(paths: Sequence[str | Path]) -> Inputs:
    """Read one scores file and/or one outputs file, telling which is which from the records."""
    found: dict[str, RecordFile] = {}
    for path in paths:
        f = read_records(path)
        if f.kind not in (SCORES, OUTPUTS):
            raise ValueError(f"{path}: holds {f.kind.name} records; expected scores.jsonl or outputs.jsonl")
        if f.kind.name in found:
            raise ValueError(f"two {f.kind.name} files given ({found[f.kind.name].path}, {path}); give one")
        found[f.kind.name] = f
    if not found:
        raise ValueError("no record files given")
    return Inputs(found.get("scores"), found.get("outputs"))


def score_analysis(inputs: Inputs, options: Options) -> tuple[ScoreSet, dict]:
    """The selected, paired scores and their analysis (summaries, comparisons, Holm)."""
    if inputs.scores is None:
        raise ValueError("no scores file given")
    chunks = {r["id"]: r["num_chunks"] for r in inputs.outputs.records} if inputs.outputs else None
    if chunks is not None and chunks.keys().isdisjoint(r["id"] for r in inputs.scores.records):
        raise ValueError(f"{inputs.outputs.path}: none of the ids scored in {inputs.scores.path} is in it "
                         "(the two files come from different runs)")
    scores = select_scores(inputs.scores.records, field=options.field, scorer=options.scorer,
                           aspect=options.aspect, allow_unpaired=options.allow_unpaired, num_chunks=chunks)
    return scores, analyse(scores, baseline=options.baseline, **options.bootstrap)


def references(inputs: Inputs, scorer: str, aspect: str) -> dict | None:
    """How many scored prompts have several references and how their scores combined them
    (``--multi-ref``, from the settings of the runs that wrote the records); None without an
    outputs file, which holds the references."""
    if inputs.outputs is None:
        return None
    several = {r["id"] for r in inputs.outputs.records if isinstance(r["reference"], list) and len(r["reference"]) > 1}
    chosen = [r for r in inputs.scores.records if r["scorer"] == scorer and r["aspect"] == aspect]
    runs = settings_by_run(inputs.scores.meta)
    rules = {runs.get(r.get("run_id"), {}).get("multi_ref") for r in chosen if r["id"] in several}
    return {"several": len(several & {r["id"] for r in chosen}), "prompts": len({r["id"] for r in chosen}),
            "multi_ref": sorted(rule for rule in rules if rule) or None}


def draw(kind: str, paths: Sequence[str | Path], out: str | Path, options: Options = Options()) -> Path:
    """Draw one figure kind (``plots.KINDS``) from record files to ``out`` (suffix picks the format)."""
    inputs = load(paths)
    if kind in plots.SCORE_KINDS:
        fig = plots.SCORE_KINDS[kind](*score_analysis(inputs, options))
    elif kind in plots.PERFORMANCE_KINDS:
        if inputs.outputs is None:
            raise ValueError(f"plot {kind!r} needs an outputs file")
        fig = plots.PERFORMANCE_KINDS[kind](performance(inputs.outputs.records, **options.bootstrap))
    else:
        raise ValueError(f"unknown plot kind {kind!r}; choose one of {', '.join(plots.KINDS)}")
    return plots.save(fig, out)[0]


def write_report(paths: Sequence[str | Path], out_dir: str | Path, options: Options = Options()) -> dict:
    """Analyse the files and write ``summary.json``, ``report.md`` and ``figures/*.png|svg``; return the summary."""
    inputs = load(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {
        "inputs": {k: str(f.path) if f else None for k, f in vars(inputs).items()},
        "alpha": options.alpha, "headline_test": HEADLINE_TEST + "_holm",
        "scores": None, "performance": None, "sentences": [], "figures": [],
    }
    figures = {}  # kind -> Figure, for every kind the data can show
    if inputs.scores:
        scores, analysis = score_analysis(inputs, options)
        summary["scores"] = {**analysis, "references": references(inputs, analysis["scorer"], analysis["aspect"])}
        summary["sentences"] = [_sentence(c, options.alpha) for c in analysis["comparisons"] if c["num_chunks"] is None]
        shown = {"by-chunks": bool(scores.buckets()), "differences": len(scores.strategies) > 1}
        figures.update({kind: draw_kind(scores, analysis) for kind, draw_kind in plots.SCORE_KINDS.items()
                        if shown.get(kind, True)})
    if inputs.outputs:
        perf = performance(inputs.outputs.records, **options.bootstrap)
        summary["performance"] = perf
        figures.update({kind: draw_kind(perf) for kind, draw_kind in plots.PERFORMANCE_KINDS.items()
                        if measured(perf, plots.PERFORMANCE_KIND_METRIC[kind])})
    for kind in plots.KINDS:  # a figure of an earlier report into this directory must not linger
        for fmt in FIGURE_FORMATS:
            (out_dir / "figures" / f"{kind}.{fmt}").unlink(missing_ok=True)
    for kind, fig in figures.items():
        saved = plots.save(fig, out_dir / "figures" / kind, formats=FIGURE_FORMATS)
        summary["figures"].append([str(p.relative_to(out_dir)) for p in saved])
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(_markdown(summary, options), encoding="utf-8")
    return summary


# ---------------------------------------------------------------------------------------------
# report.md


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(ci, spec: str = ".4f") -> str:
    return "no CI" if ci is None else f"[{ci[0]:{spec}}, {ci[1]:{spec}}]"


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"= {p:.3g}"


def _sentence(c: dict, alpha: float) -> str:
    """One comparison in words, e.g. 'optimized vs default: difference -0.0100 [-0.0300, 0.0100], ...'."""
    head = f"{c['strategy']} vs {c['baseline']}: difference {c['diff']:+.4f}"
    p = c[HEADLINE_TEST + "_holm"]
    if p is None:
        return f"{head} on {c['n']} prompt; too few pairs for an interval or a test."
    if p < alpha:
        verdict = f"significant at α = {alpha:g} ({c['strategy']} {'better' if c['diff'] > 0 else 'worse'})"
    else:
        verdict = f"not significant at α = {alpha:g}"
    return (f"{head} {_ci(c['diff_ci'])}, p {_p(p)} (Holm), {verdict}; "
            f"wins/ties/losses {c['wins']}/{c['ties']}/{c['losses']} over {c['n']} prompts.")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, row)) + " |" for row in rows), ""]


def _markdown(summary: dict, options: Options) -> str:
    lines = ["# GPTScore report", ""]
    notes: list[str] = []
    if summary["scores"]:
        lines += _score_section(summary["scores"], summary["inputs"]["scores"], options, notes)
    if summary["performance"]:
        lines += _performance_section(summary["performance"], summary["inputs"]["outputs"], options, notes)
    lines += ["## Figures", ""]
    for png, svg in summary["figures"]:
        lines += [f"![{Path(png).stem}]({png}) ([SVG]({svg}))", ""]
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in dict.fromkeys(notes)), ""]
    return "\n".join(lines)


def _score_section(a: dict, path: str, options: Options, notes: list[str]) -> list[str]:
    level = plots.percent(a["confidence"])
    pairing = (f"paired by id across {len(a['strategies'])} strategies; baseline `{a['baseline']}`."
               if len(a["strategies"]) > 1 else f"one strategy (`{a['baseline']}`): nothing to compare.")
    lines = [
        "## Quality (GPTScore)", "",
        f"Scores from `{path}`: scorer `{a['scorer']}`, aspect `{a['aspect']}`, field `{a['field']}` "
        f"(mean log-probability per target token, nats; higher is better). {a['n_ids']} "
        f"prompt{'s' if a['n_ids'] != 1 else ''}, {pairing}",
        "",
        f"Intervals: {level} BCa bootstrap ({a['n_resamples']} resamples, seed {a['seed']})."
        + (f" Tests against the baseline: {', '.join(TEST_NAMES.values())}; Holm-adjusted within each "
           f"family (the comparisons at one prompt-length level). Sentences state the "
           f"{TEST_NAMES[HEADLINE_TEST]} p-value." if len(a["strategies"]) > 1 else ""),
        "",
    ]
    refs = a.get("references")
    if refs and refs["several"]:
        rule = " and ".join(f"`{r}`" for r in refs["multi_ref"]) if refs["multi_ref"] else "a rule not recorded"
        lines += [f"{refs['several']} of the {refs['prompts']} prompts have several references; their "
                  f"scores combine the references by {rule} (`--multi-ref`: each field over the "
                  "references on its own).", ""]
    if a["dropped_unpaired"]:
        dropped = ", ".join(f"{n} of {s}" for s, n in a["dropped_unpaired"].items())
        lines += [f"Unpaired ids left out (--allow-unpaired): {dropped}; the analysis uses the "
                  f"{a['n_ids']} ids every strategy has.", ""]
    lines += _table(
        ["strategy", "n", "mean", f"{level} CI", "harmonic mean", f"{level} CI"],
        [[s, v["all"]["n"], _num(v["all"]["mean"]), _ci(v["all"]["mean_ci"]), _num(v["all"]["hmean"]),
          _ci(v["all"]["hmean_ci"])] for s, v in a["strategies"].items()],
    )
    for s, levels in a["strategies"].items():
        for name, summary in levels.items():
            where = "all prompts" if name == "all" else f"num_chunks {name}"
            notes += [f"{s}, {where}: {n}" for n in summary["notes"] if n != NO_CI]
            if NO_CI in summary["notes"]:
                notes.append(f"{s}, {where}: only {summary['n']} sample; no confidence interval.")
    overall = [c for c in a["comparisons"] if c["num_chunks"] is None]
    if overall:
        lines += ["### Comparisons with the baseline", "",
                  *(f"- {_sentence(c, options.alpha)}" for c in overall), ""]
        lines += _comparison_table(overall, level)
    buckets = [k for k in next(iter(a["strategies"].values())) if k != "all"]
    if buckets:
        lines += ["### By prompt length (num_chunks)", ""]
        lines += _table(
            ["num_chunks", "n", *(f"{s} mean {level} CI" for s in a["strategies"])],
            [[b, next(iter(a["strategies"].values()))[b]["n"],
              *(f"{_num(v[b]['mean'])} {_ci(v[b]['mean_ci'])}" for v in a["strategies"].values())]
             for b in buckets],
        )
        by_bucket = [c for c in a["comparisons"] if c["num_chunks"] is not None]
        if by_bucket:
            lines += _comparison_table(by_bucket, level, with_bucket=True)
    else:
        notes.append("No num_chunks in the scores or the outputs: no breakdown by prompt length.")
    return lines


def _comparison_table(comparisons: list[dict], level: str, with_bucket: bool = False) -> list[str]:
    header = [*(["num_chunks"] if with_bucket else []), "strategy", "n", "difference", f"{level} CI",
              "effect size d_z", "wins/ties/losses", "p bootstrap", "p randomization", "p Wilcoxon",
              "p randomization (Holm)"]
    rows = [[*([c["num_chunks"]] if with_bucket else []), f"{c['strategy']} − {c['baseline']}", c["n"],
             f"{c['diff']:+.4f}", _ci(c["diff_ci"]), _num(c["effect_size"], 2),
             f"{c['wins']}/{c['ties']}/{c['losses']}", *(_p(c[t]).lstrip("= ") for t in TEST_NAMES),
             _p(c[HEADLINE_TEST + "_holm"]).lstrip("= ")] for c in comparisons]
    return _table(header, rows)


def _performance_section(perf: dict, path: str, options: Options, notes: list[str]) -> list[str]:
    lines = ["## Performance", "",
             f"Timings from `{path}` on {', '.join(perf['devices'])}; model {', '.join(perf['models'])}. "
             f"Medians with {plots.percent(options.confidence)} bootstrap intervals ({options.n_resamples} resamples), "
             "and 90th percentiles, per strategy and prompt length (num_chunks; 'all' pools them).", ""]
    if len(perf["devices"]) > 1 or len(perf["models"]) > 1:
        notes.append("Outputs come from more than one device or model: their timings are not comparable.")
    strategies = list(perf["strategies"])
    buckets = sorted({b for levels in perf["strategies"].values() for b in levels}, key=lambda b: (b != "all", b.zfill(9)))
    for name, metric in METRICS.items():
        if not measured(perf, name):
            notes.append(f"{metric.label}: not measured in these outputs.")
            continue
        lines += [f"### {metric.label[0].upper()}{metric.label[1:]} [{metric.unit}]", ""]
        header = ["num_chunks", *(f"{s} {cell}" for s in strategies for cell in ("n", "median [CI]", "p90"))]
        rows = [[b, *(cell for s in strategies for cell in _perf_cells(perf["strategies"][s].get(b), name, metric.scale))]
                for b in buckets]
        lines += _table(header, rows)
    return lines


def _perf_cells(row: dict | None, name: str, scale: float) -> list[str]:
    """n, median [CI] and p90 of one metric in display units; blanks where nothing was measured."""
    if row is None or row[name]["n"] == 0:
        return ["0", "n/a", "n/a"]
    d = row[name]
    ci = None if d["median_ci"] is None else [v / scale for v in d["median_ci"]]
    return [str(d["n"]), f"{d['median'] / scale:.4g} {_ci(ci, '.4g')}", f"{d['p90'] / scale:.4g}"]
