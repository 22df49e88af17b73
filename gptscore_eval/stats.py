"""System-level GPTScore statistics: means with confidence intervals, paired tests, Holm.

Per-sample scores are log-probabilities (mean log p per target token), so two means matter:

* the arithmetic mean of the log-scores, and
* the harmonic mean in probability space, reported in log space: ``log(n / sum(exp(-x)))``.
  It is dominated by the worst samples, as an F-score is by the worse direction.

Both get a BCa bootstrap interval from ``scipy.stats.bootstrap``. Two strategies scored on the
same prompts are compared pair by pair (records are paired by prompt id): mean difference with a
BCa interval, a paired bootstrap test (Koehn 2004), an approximate randomization test, the
Wilcoxon signed-rank test, win/tie/loss counts and an effect size. ``holm`` adjusts p-values
across the comparisons of one family. The design follows sacrebleu's significance module.

The second half of the module turns score records into aligned per-strategy samples
(``select_scores``) and analyses them per strategy and per prompt-length bucket (``analyse``).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy import special, stats

from gptscore_eval.records import DIRECTIONS, F_VARIANTS

Interval = tuple[float, float]

NO_CI = "fewer than 2 samples: no confidence interval"

# Bootstrap resamples are drawn in blocks of this many, so memory stays bounded for large n.
_BLOCK = 1000


def log_harmonic_mean(values, axis: int = -1):
    """log of the harmonic mean of exp(values), computed in log space (no under/overflow).

    ``log(n / sum(exp(-x))) = log(n) - logsumexp(-x)``. For two values (rh, hr) it is
    GPTScore's ``prob_hm_f``: the log of the F-score of the two direction probabilities.
    """
    values = np.asarray(values, dtype=float)
    return np.log(values.shape[axis]) - special.logsumexp(-values, axis=axis)


def _mean(values, axis: int = -1):
    return np.mean(values, axis=axis)


def confidence_interval(
    values: Sequence[float],
    statistic: Callable,
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int | np.random.SeedSequence = 0,
) -> tuple[Interval | None, str | None]:
    """BCa bootstrap interval of ``statistic`` (vectorized, takes ``axis``); returns (interval, note).

    No interval for fewer than 2 samples. All-equal samples give the point itself (the bootstrap
    distribution is degenerate). Where BCa is undefined (e.g. a median with heavy ties makes its
    acceleration 0/0) the percentile interval is used instead; the note says which happened.
    """
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return None, NO_CI
    if np.ptp(values) == 0:
        point = float(statistic(values))
        return (point, point), "all values are equal: the interval is the point itself"
    note = None
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            # Degenerate resamples are handled below through the NaN they produce.
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            result = stats.bootstrap(
                (values,), statistic, n_resamples=n_resamples, batch=_BLOCK, vectorized=True,
                confidence_level=confidence, method=method, rng=np.random.default_rng(seed),
            )
        low, high = result.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return (float(low), float(high)), note
        note = "BCa interval undefined for this sample: percentile interval instead"
    return None, "bootstrap interval undefined for this sample"


@dataclass(frozen=True)
class Summary:
    """Mean and probability-space harmonic mean (in log space) of per-sample log-scores, with CIs."""

    n: int
    mean: float
    mean_ci: Interval | None
    hmean: float
    hmean_ci: Interval | None
    confidence: float
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(values: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0) -> Summary:
    """Mean and harmonic mean (log of the HM of exp(values)) with BCa bootstrap intervals."""
    values = _finite_array(values, "values")
    options = dict(confidence=confidence, n_resamples=n_resamples, seed=seed)
    mean_ci, mean_note = confidence_interval(values, _mean, **options)
    hmean_ci, hmean_note = confidence_interval(values, log_harmonic_mean, **options)
    return Summary(
        n=values.size,
        mean=float(np.mean(values)),
        mean_ci=mean_ci,
        hmean=float(log_harmonic_mean(values)),
        hmean_ci=hmean_ci,
        confidence=confidence,
        notes=_unique_notes(mean_note, hmean_note),
    )


@dataclass(frozen=True)
class Comparison:
    """Paired comparison of a against b (diff = mean of a - b; a wins where its score is higher)."""

    n: int
    diff: float
    diff_ci: Interval | None
    p_bootstrap: float | None
    p_randomization: float | None
    p_wilcoxon: float | None
    wins: int
    ties: int
    losses: int
    effect_size: float | None  # Cohen's d_z: mean difference / sd of differences
    confidence: float
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


def compare(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0
) -> Comparison:
    """Compare paired samples a[i] <-> b[i] (same prompt, two strategies).

    * ``diff_ci``: BCa bootstrap interval of the mean difference.
    * ``p_bootstrap``: paired bootstrap (Koehn 2004) made two-sided by shifting to the null:
      resample the differences with replacement, centre the resampled means on 0 and count how
      often ``|resampled mean - observed mean| >= |observed mean|``; p = (count + 1) / (B + 1).
    * ``p_randomization``: approximate randomization: flip the sign of each paired difference
      at random (a and b exchangeable under the null) and count ``|mean| >= |observed mean|``;
      p = (count + 1) / (R + 1). Valid at any n; the report's headline p-value.
    * ``p_wilcoxon``: ``scipy.stats.wilcoxon`` signed-rank test (zero differences dropped).
    """
    a, b = _finite_array(a, "a"), _finite_array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.size} and {b.size}")
    if a.size == 0:
        raise ValueError("no paired samples to compare")
    d = a - b
    wins, ties, losses = int(np.sum(d > 0)), int(np.sum(d == 0)), int(np.sum(d < 0))
    diff = float(np.mean(d))
    if d.size < 2:
        return Comparison(d.size, diff, None, None, None, None, wins, ties, losses, None, confidence,
                          (f"{NO_CI} or test",))
    ci_seed, bootstrap_seed, randomization_seed = np.random.SeedSequence(seed).spawn(3)
    diff_ci, note = confidence_interval(d, _mean, confidence=confidence, n_resamples=n_resamples, seed=ci_seed)
    sd = float(np.std(d, ddof=1))
    return Comparison(
        n=d.size,
        diff=diff,
        diff_ci=diff_ci,
        p_bootstrap=_paired_bootstrap_p(d, n_resamples, np.random.default_rng(bootstrap_seed)),
        p_randomization=_randomization_p(d, n_resamples, np.random.default_rng(randomization_seed)),
        p_wilcoxon=_wilcoxon_p(d),
        wins=wins,
        ties=ties,
        losses=losses,
        effect_size=diff / sd if sd > 0 else None,
        confidence=confidence,
        notes=_unique_notes(note, None if sd > 0 else "all differences are equal: no effect size"),
    )


def _paired_bootstrap_p(d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> float:
    observed = abs(d.mean())
    extreme = 0
    for size in _blocks(n_resamples):
        means = d[rng.integers(0, d.size, size=(size, d.size))].mean(axis=1)
        extreme += int(np.sum(np.abs(means - d.mean()) >= _at_least(observed)))
    return (extreme + 1) / (n_resamples + 1)


def _randomization_p(d: np.ndarray, n_resamples: int, rng: np.random.Generator) -> float:
    observed = abs(d.mean())
    extreme = 0
    for size in _blocks(n_resamples):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(size, d.size))
        extreme += int(np.sum(np.abs((signs * d).mean(axis=1)) >= _at_least(observed)))
    return (extreme + 1) / (n_resamples + 1)


def _at_least(observed: float) -> float:
    # A resample that reproduces the observed statistic must count as "as extreme", but sums in
    # a different order differ in the last bits; a tiny relative tolerance absorbs that.
    return observed * (1 - 1e-9)


def _wilcoxon_p(d: np.ndarray) -> float:
    if not np.any(d):
        return 1.0  # all pairs tie: no evidence of a difference (scipy would return NaN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "exact p-value not possible with ties/zeros"
        return float(stats.wilcoxon(d).pvalue)


def _blocks(total: int) -> Iterable[int]:
    for start in range(0, total, _BLOCK):
        yield min(_BLOCK, total - start)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given (step-down, monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError("holm needs a list of p-values in [0, 1]")
    order = np.argsort(p, kind="stable")
    m = p.size
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted.tolist()


def _finite_array(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def _unique_notes(*notes: str | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for n in notes if n))


# ---------------------------------------------------------------------------------------------
# From score records to aligned samples

SCORE_FIELDS = DIRECTIONS + F_VARIANTS


@dataclass
class ScoreSet:
    """One score field of one scorer and aspect, per strategy and prompt id, paired across strategies.

    ``values[strategy][id]`` is the sample's score; every strategy holds the same ids.
    ``num_chunks[id]`` is the prompt-length bucket (empty when the records do not say).
    """

    field: str
    scorer: str
    aspect: str
    template: str
    values: dict[str, dict[str, float]]
    num_chunks: dict[str, int]
    dropped: dict[str, int]  # strategy -> how many of its ids were left out as unpaired

    @property
    def strategies(self) -> list[str]:
        return list(self.values)

    @property
    def ids(self) -> list[str]:
        return sorted(next(iter(self.values.values())))

    def buckets(self) -> list[int]:
        return sorted(set(self.num_chunks.values()))

    def sample(self, strategy: str, bucket: int | None = None) -> np.ndarray:
        """Scores of one strategy in id order (the same order for every strategy: paired)."""
        ids = self.ids if bucket is None else [i for i in self.ids if self.num_chunks[i] == bucket]
        return np.array([self.values[strategy][i] for i in ids])


def field_value(record: dict, name: str) -> float | None:
    """A score field of a record: a direction's mean log-probability, or an F variant's number."""
    value = record.get(name)
    return value["mean"] if isinstance(value, dict) else value


def select_scores(
    records: Iterable[dict],
    *,
    field: str | None = None,
    scorer: str | None = None,
    aspect: str | None = None,
    allow_unpaired: bool = False,
    num_chunks: Mapping[str, int] | None = None,
) -> ScoreSet:
    """Pick one scorer, aspect and field from score records and pair them by prompt id.

    ``field`` defaults to ``avg_f`` when the records have it, else ``ref_hyp``. Several scorers,
    aspects or templates without a choice, duplicate (id, strategy) pairs, or ids that some
    strategy lacks are errors; ``allow_unpaired`` analyses the ids all strategies share instead.
    ``num_chunks`` (id -> bucket, e.g. from outputs.jsonl) fills buckets the scores do not carry.
    """
    records = list(records)
    if not records:
        raise ValueError("no score records")
    records = _only(records, "scorer", scorer, "choose one with --scorer")
    records = _only(records, "aspect", aspect, "choose one with --aspect")
    _only(records, "template", None, "scores made with different templates are not comparable")
    if field is None:
        field = "avg_f" if any("avg_f" in r for r in records) else "ref_hyp"
    if field not in SCORE_FIELDS:
        raise ValueError(f"unknown score field {field!r}; choose one of {', '.join(SCORE_FIELDS)}")
    missing = [f"{r['id']}/{r['strategy']}" for r in records if field_value(r, field) is None]
    if missing:
        raise ValueError(f"field {field!r} is missing in {len(missing)} records: {_first(missing)}")

    values: dict[str, dict[str, float]] = {}
    buckets: dict[str, int] = dict(num_chunks or {})
    for r in records:
        by_id = values.setdefault(r["strategy"], {})
        if r["id"] in by_id:
            raise ValueError(f"duplicate id {r['id']!r} for strategy {r['strategy']!r}")
        by_id[r["id"]] = float(field_value(r, field))
        if r.get("num_chunks") is not None:
            if buckets.setdefault(r["id"], r["num_chunks"]) != r["num_chunks"]:
                raise ValueError(f"id {r['id']!r} has num_chunks {buckets[r['id']]} and {r['num_chunks']}")

    shared = set.intersection(*(set(v) for v in values.values()))
    unpaired = {s: sorted(set(v) - shared) for s, v in values.items()}
    if any(unpaired.values()) and not allow_unpaired:
        everyone = set().union(*(set(v) for v in values.values()))
        lacking = [f"{s} lacks {len(everyone - set(v))} ({_first(sorted(everyone - set(v)))})"
                   for s, v in sorted(values.items()) if everyone - set(v)]
        raise ValueError(f"ids not scored for every strategy: {'; '.join(lacking)}; "
                         "--allow-unpaired analyses the ids all strategies share")
    if not shared:
        raise ValueError("no prompt id is scored for every strategy")
    values = {s: {i: v[i] for i in sorted(shared)} for s, v in sorted(values.items())}
    known = {i: buckets[i] for i in shared if i in buckets}
    if known and len(known) < len(shared):
        raise ValueError(f"num_chunks is known for only {len(known)} of {len(shared)} ids")
    return ScoreSet(field, records[0]["scorer"], records[0]["aspect"], records[0]["template"], values, known,
                    {s: len(ids) for s, ids in unpaired.items() if ids})


def _only(records: list[dict], key: str, chosen: str | None, advice: str) -> list[dict]:
    """The records whose ``key`` is ``chosen``; without a choice, the records must agree on it."""
    counts = Counter(r[key] for r in records)
    if chosen is not None:
        if chosen not in counts:
            raise ValueError(f"no records with {key} {chosen!r}; present: {_listing(counts)}")
        return [r for r in records if r[key] == chosen]
    if len(counts) > 1:
        raise ValueError(f"records mix {len(counts)} {key}s ({_listing(counts)}); {advice}")
    return records


def _listing(counts: Counter) -> str:
    return ", ".join(f"{name!r} ({n} records)" for name, n in sorted(counts.items()))


def _first(items: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


# ---------------------------------------------------------------------------------------------
# Whole analysis: per strategy, per bucket, and every strategy against a baseline


def choose_baseline(strategies: Sequence[str], baseline: str | None) -> str:
    """The named baseline, or ``default`` when present, or the only strategy there is."""
    if baseline is None:
        if "default" in strategies or len(strategies) == 1:
            return "default" if "default" in strategies else strategies[0]
        raise ValueError(f"no strategy 'default' to compare against; choose --baseline from {', '.join(strategies)}")
    if baseline not in strategies:
        raise ValueError(f"baseline {baseline!r} is not among the strategies: {', '.join(strategies)}")
    return baseline


def analyse(
    scores: ScoreSet, *, baseline: str | None = None, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0
) -> dict:
    """Summaries per strategy and bucket, comparisons with the baseline and Holm-adjusted p-values.

    Each Holm family is the comparisons with the baseline at one level (all prompts, or one
    num_chunks bucket), adjusted separately for each test. JSON-ready (the ``summary.json`` part).
    """
    baseline = choose_baseline(scores.strategies, baseline)
    options = dict(confidence=confidence, n_resamples=n_resamples, seed=seed)
    others = [s for s in scores.strategies if s != baseline]
    levels: list[int | None] = [None, *scores.buckets()]
    result = {
        "field": scores.field, "scorer": scores.scorer, "aspect": scores.aspect, "template": scores.template,
        "n_ids": len(scores.ids), "dropped_unpaired": scores.dropped, "baseline": baseline,
        "confidence": confidence, "n_resamples": n_resamples, "seed": seed,
        "strategies": {}, "comparisons": [],
    }
    for strategy in [baseline, *others]:
        result["strategies"][strategy] = {
            _level_name(level): {"num_chunks": level, **summarize(scores.sample(strategy, level), **options).to_dict()}
            for level in levels
        }
    for level in levels:
        family = [
            {"strategy": s, "baseline": baseline, "num_chunks": level,
             **compare(scores.sample(s, level), scores.sample(baseline, level), **options).to_dict()}
            for s in others
        ]
        for test in ("p_bootstrap", "p_randomization", "p_wilcoxon"):
            tested = [c for c in family if c[test] is not None]  # None: fewer than 2 pairs
            for c in family:
                c[test + "_holm"] = None
            for c, adjusted in zip(tested, holm([c[test] for c in tested])):
                c[test + "_holm"] = adjusted
        result["comparisons"].extend(family)
    return result


def _level_name(level: int | None) -> str:
    return "all" if level is None else str(level)
