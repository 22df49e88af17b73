"""Figures of scores and performance, one function per kind; each returns a matplotlib Figure.

Score figures take a ``stats.ScoreSet`` and/or the ``stats.analyse`` result; performance figures
take the ``perf.performance`` result. Figures are built on ``matplotlib.figure.Figure`` (Agg,
no pyplot state), coloured with the Okabe-Ito palette (colour-blind safe) plus distinct markers,
and ``save`` writes them as PNG and SVG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure

from gptscore_eval.perf import METRICS
from gptscore_eval.stats import ScoreSet

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

_FIELD_LABELS = {
    "ref_hyp": "ref→hyp score",
    "hyp_ref": "hyp→ref score",
    "src_hyp": "src→hyp score",
    "avg_f": "avg_f = (ref→hyp + hyp→ref) / 2",
    "prob_hm_f": "prob_hm_f (F of the two directions' probabilities)",
    "legacy_harm_f": "legacy_harm_f (published GPTScore formula)",
}
_CHUNKS_LABEL = "prompt length (num_chunks)"


def score_label(field: str) -> str:
    return f"{_FIELD_LABELS.get(field, field)}\n[mean log p per token, nats]"


def percent(fraction: float) -> str:
    """A confidence level as a label: 0.95 -> '95%', 0.999 -> '99.9%' (not rounded to '100%')."""
    return f"{fraction * 100:g}%"


def _style(strategies: Sequence[str]) -> dict[str, dict]:
    """The same colour and marker for a strategy in every figure of one report: assigned in name
    order, not in the order a figure lists them (score figures put the baseline first)."""
    return {s: {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": MARKERS[i % len(MARKERS)]}
            for i, s in enumerate(sorted(strategies))}


def _figure(title: str, width: float = 6.4) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


def _errors(center: float, ci) -> list[list[float]]:
    """Asymmetric error-bar lengths; zero where there is no interval."""
    return [[0.0], [0.0]] if ci is None else [[center - ci[0]], [ci[1] - center]]


def _jitter(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.12, 0.12, n)


def score_distribution(scores: ScoreSet, strategies: Sequence[str] | None = None) -> Figure:
    """Per strategy: violin of the per-prompt scores, a box plot inside, and every point."""
    strategies = list(strategies or scores.strategies)
    style = _style(strategies)
    fig, ax = _figure(f"Score distribution per strategy ({scores.aspect}, n = {len(scores.ids)} prompts)")
    data = [scores.sample(s) for s in strategies]
    positions = np.arange(len(strategies))
    violins = ax.violinplot(data, positions, widths=0.8, showextrema=False)
    for body, s in zip(violins["bodies"], strategies):
        body.set_facecolor(style[s]["color"])
        body.set_alpha(0.25)
    ax.boxplot(data, positions=positions, widths=0.18, showfliers=False, medianprops={"color": "black"})
    for x, values, s in zip(positions, data, strategies):
        ax.scatter(x + _jitter(values.size), values, s=10, alpha=0.6, color=style[s]["color"],
                   marker=style[s]["marker"], linewidths=0)
    ax.set_xticks(positions, strategies)
    ax.set_xlabel("strategy")
    ax.set_ylabel(score_label(scores.field))
    return fig


def score_means(analysis: dict) -> Figure:
    """Per strategy: mean and harmonic mean of the scores, each with its confidence interval."""
    strategies = list(analysis["strategies"])
    fig, ax = _figure(f"Mean and harmonic mean with {percent(analysis['confidence'])} BCa intervals")
    for offset, (key, label, marker, face) in zip((-0.1, 0.1), (("mean", "arithmetic mean", "o", None),
                                                                ("hmean", "harmonic mean (probability space)", "s", "white"))):
        for i, s in enumerate(strategies):
            summary = analysis["strategies"][s]["all"]
            ax.errorbar(i + offset, summary[key], yerr=_errors(summary[key], summary[key + "_ci"]),
                        fmt=marker, color=OKABE_ITO[i % len(OKABE_ITO)], capsize=4, mfc=face)
        ax.plot([], [], marker, color="black", mfc=face, label=label)  # legend entry in neutral black
    ax.set_xticks(range(len(strategies)), strategies)
    ax.set_xlabel("strategy")
    ax.set_ylabel(score_label(analysis["field"]))
    ax.legend(fontsize=8)
    return fig


def score_by_chunks(analysis: dict) -> Figure:
    """Mean score with its interval against prompt length, one line per strategy."""
    strategies = list(analysis["strategies"])
    buckets = _buckets(analysis["strategies"][strategies[0]])
    if not buckets:
        raise ValueError("the scores carry no num_chunks: pass outputs.jsonl too, or score with num_chunks")
    style = _style(strategies)
    fig, ax = _figure(f"Mean score by prompt length ({percent(analysis['confidence'])} BCa intervals)")
    for i, s in enumerate(strategies):
        rows = [analysis["strategies"][s][str(b)] for b in buckets]
        x = np.arange(len(buckets)) + _dodge(i, len(strategies))
        means = [r["mean"] for r in rows]
        yerr = np.hstack([_errors(r["mean"], r["mean_ci"]) for r in rows])
        ax.errorbar(x, means, yerr=yerr, capsize=3, label=s, **style[s])
    _chunk_axis(ax, buckets)
    ax.set_ylabel(score_label(analysis["field"]))
    ax.legend(title="strategy", fontsize=8)
    return fig


def paired_differences(scores: ScoreSet, analysis: dict) -> Figure:
    """Per-prompt score differences of each strategy against the baseline, with the mean and CI."""
    baseline = analysis["baseline"]
    others = [s for s in analysis["strategies"] if s != baseline]
    if not others:
        raise ValueError("only one strategy: nothing to compare with the baseline")
    style = _style(list(analysis["strategies"]))
    fig, ax = _figure(f"Paired differences against {baseline}\n(dots: prompts; diamond: mean with "
                      f"{percent(analysis['confidence'])} BCa interval)")
    overall = {c["strategy"]: c for c in analysis["comparisons"] if c["num_chunks"] is None}
    reference = scores.sample(baseline)
    for x, s in enumerate(others):
        d = scores.sample(s) - reference
        ax.scatter(x + _jitter(d.size), d, s=10, alpha=0.5, linewidths=0, **style[s])
        c = overall[s]
        ax.errorbar(x + 0.3, c["diff"], yerr=_errors(c["diff"], c["diff_ci"]), fmt="D", color="black", capsize=5)
    ax.axhline(0, color="grey", lw=1, ls="--")
    ax.set_xticks(range(len(others)), [f"{s} − {baseline}" for s in others])
    ax.set_xlabel("strategy")
    ax.set_ylabel(f"score difference [nats per token]\n({analysis['field']}; > 0: better than {baseline})")
    return fig


def _metric_vs_chunks(perf: dict, name: str, *, with_p90: bool = True) -> Figure:
    """Median of one performance metric (with its interval) against prompt length, per strategy."""
    metric = METRICS[name]
    scale = metric.scale
    strategies = list(perf["strategies"])
    buckets = sorted({b for s in strategies for b in _buckets(perf["strategies"][s])})
    style = _style(strategies)
    fig, ax = _figure(f"{metric.label[0].upper()}{metric.label[1:]} by prompt length "
                      f"(median, {'p90 dashed, ' if with_p90 else ''}bootstrap interval)")
    plotted = False
    for i, s in enumerate(strategies):
        rows = [(j, perf["strategies"][s][str(b)][name]) for j, b in enumerate(buckets)
                if str(b) in perf["strategies"][s]]
        rows = [(j, r) for j, r in rows if r["n"]]
        if not rows:
            continue
        plotted = True
        x = np.array([j for j, _ in rows]) + _dodge(i, len(strategies))
        medians = [r["median"] / scale for _, r in rows]
        yerr = np.hstack([_errors(r["median"] / scale, None if r["median_ci"] is None else
                                  [v / scale for v in r["median_ci"]]) for _, r in rows])
        ax.errorbar(x, medians, yerr=yerr, capsize=3, label=s, **style[s])
        if with_p90:
            ax.plot(x, [r["p90"] / scale for _, r in rows], ls="--", lw=1, color=style[s]["color"])
    if not plotted:  # e.g. peak memory, which is not measured on CPU
        raise ValueError(f"no {metric.label} measured in these outputs")
    _chunk_axis(ax, buckets)
    ax.set_ylabel(f"{metric.label} [{metric.unit}]")
    ax.set_ylim(bottom=0)
    ax.legend(title="strategy", fontsize=8)
    return fig


def latency(perf: dict) -> Figure:
    return _metric_vs_chunks(perf, "latency_s")


def time_to_first_token(perf: dict) -> Figure:
    return _metric_vs_chunks(perf, "ttft_s")


def inter_token_latency(perf: dict) -> Figure:
    return _metric_vs_chunks(perf, "inter_token_s")


def throughput(perf: dict) -> Figure:
    return _metric_vs_chunks(perf, "tokens_per_s", with_p90=False)


def memory(perf: dict) -> Figure:
    return _metric_vs_chunks(perf, "peak_memory_bytes", with_p90=False)


# Every kind `gptscore plot` draws, by what it is drawn from: scores or output timings.
SCORE_KINDS: dict[str, Callable[[ScoreSet, dict], Figure]] = {
    "distribution": lambda scores, analysis: score_distribution(scores, list(analysis["strategies"])),
    "means": lambda scores, analysis: score_means(analysis),
    "by-chunks": lambda scores, analysis: score_by_chunks(analysis),
    "differences": paired_differences,
}
PERFORMANCE_KINDS: dict[str, Callable[[dict], Figure]] = {
    "latency": latency,
    "ttft": time_to_first_token,
    "inter-token": inter_token_latency,
    "throughput": throughput,
    "memory": memory,
}
PERFORMANCE_KIND_METRIC = {"latency": "latency_s", "ttft": "ttft_s", "inter-token": "inter_token_s",
                           "throughput": "tokens_per_s", "memory": "peak_memory_bytes"}
KINDS = (*SCORE_KINDS, *PERFORMANCE_KINDS)


def save(fig: Figure, path: str | Path, formats: Sequence[str] | None = None) -> list[Path]:
    """Write the figure to ``path`` (its suffix picks the format) or, with ``formats``, one file
    per format next to it (``path`` without suffix + ``.png``, ``.svg``, ...)."""
    path = Path(path)
    if formats is None and path.suffix.lstrip(".").lower() not in fig.canvas.get_supported_filetypes():
        raise ValueError(f"{path}: the suffix picks the figure format: end it in .png, .svg or .pdf")
    targets = [path] if formats is None else [path.with_suffix("." + f) for f in formats]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=150)
    return targets


def _buckets(levels: dict) -> list[int]:
    return sorted(int(k) for k in levels if k != "all")


def _dodge(i: int, n: int, step: float = 0.08) -> float:
    """Horizontal offset that keeps the error bars of n strategies from overlapping."""
    return (i - (n - 1) / 2) * step


def _chunk_axis(ax, buckets: Sequence[int]) -> None:
    ax.set_xticks(range(len(buckets)), [str(b) for b in buckets])
    ax.set_xlabel(_CHUNKS_LABEL)
