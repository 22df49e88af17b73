"""Performance aggregation from ``outputs.jsonl`` timings, per strategy and prompt-length bucket.

Each output record is one timed request. Per strategy and num_chunks bucket (and over all
buckets) this gives, for every metric, the median with a bootstrap interval and the 90th
percentile. Timing distributions are skewed and have outliers (first-call compilation, clock
boosts), so medians and p90 describe them, not means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from gptscore_eval.stats import confidence_interval


@dataclass(frozen=True)
class Metric:
    label: str  # for axes and tables
    unit: str  # the unit shown; the summary keeps SI units (s, bytes), shown value = SI / scale
    value: Callable[[dict], float | None]  # from one output record; None where not measured
    scale: float = 1.0


def _inter_token_s(record: dict) -> float | None:
    steps = record["timings"].get("decode_s") or []
    return float(np.median(steps)) if steps else None


METRICS: dict[str, Metric] = {
    "latency_s": Metric("latency (total)", "s", lambda r: r["timings"]["total_s"]),
    "ttft_s": Metric("time to first token (prefill)", "s", lambda r: r["timings"]["prefill_s"]),
    "inter_token_s": Metric("inter-token latency (median decode step)", "ms", _inter_token_s, 1e-3),
    "tokens_per_s": Metric("throughput", "tokens/s", lambda r: r["timings"]["tokens_per_s"]),
    "peak_memory_bytes": Metric("peak memory", "GiB", lambda r: r.get("peak_memory_bytes"), 2**30),
}


def measured(perf: dict, metric: str) -> bool:
    """Whether any strategy has a value of ``metric`` (e.g. peak memory is None on CPU)."""
    return any(levels["all"][metric]["n"] for levels in perf["strategies"].values())


def _median(values, axis: int = -1):
    return np.median(values, axis=axis)


def describe(values: Iterable[float], *, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> dict:
    """n, median with a bootstrap interval (BCa, percentile where BCa is undefined), and p90."""
    values = np.asarray(list(values), dtype=float)
    if values.size == 0:
        return {"n": 0, "median": None, "median_ci": None, "p90": None, "notes": ["not measured"]}
    ci, note = confidence_interval(values, _median, confidence=confidence, n_resamples=n_resamples, seed=seed)
    return {"n": int(values.size), "median": float(np.median(values)), "median_ci": ci,
            "p90": float(np.percentile(values, 90)), "notes": [note] if note else []}


def performance(
    records: Iterable[dict], *, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0
) -> dict:
    """Per strategy, then per bucket ("all" and each num_chunks): ``{metric: describe(...)}``.

    Also lists the devices and models the records come from: timings from different devices
    or models are not comparable, and the report says so.
    """
    records = list(records)
    if not records:
        raise ValueError("no output records")
    options = dict(confidence=confidence, n_resamples=n_resamples, seed=seed)
    by_strategy: dict[str, dict[str, list[dict]]] = {}
    for r in records:
        buckets = by_strategy.setdefault(r["strategy"], {"all": []})
        buckets["all"].append(r)
        buckets.setdefault(str(r["num_chunks"]), []).append(r)
    table = {}
    for strategy, buckets in sorted(by_strategy.items()):
        table[strategy] = {}
        for bucket in sorted(buckets, key=lambda b: (b != "all", int(b) if b != "all" else 0)):
            group = buckets[bucket]
            row = {"num_chunks": None if bucket == "all" else int(bucket), "n": len(group)}
            for name, metric in METRICS.items():
                row[name] = describe((v for v in map(metric.value, group) if v is not None), **options)
            table[strategy][bucket] = row
    return {
        "devices": sorted({r["device"] for r in records}),
        "models": sorted({r["model"] for r in records}),
        "strategies": table,
    }
