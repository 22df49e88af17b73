"""GPTScore of hypotheses against references (and sources): directions and per-sample F scores.

Directions (DESIGN.md §5): ``ref_hyp`` scores the hypothesis given the reference (precision-like),
``hyp_ref`` the reference given the hypothesis (recall-like), ``src_hyp`` the hypothesis given the
source prompt. Each is the mean log-probability per target token, kept with its sum and count.

Per-sample combinations of rh = ref_hyp mean and hr = hyp_ref mean:

* ``avg_f = (rh + hr) / 2``
* ``prob_hm_f = log(2pq / (p + q))`` with p = e^rh, q = e^hr: the harmonic mean of the two
  per-token probabilities, a true F that is dominated by the worse direction.
* ``legacy_harm_f = rh·hr / (rh + hr)``: the formula of the published GPTScore/BARTScore code,
  kept only to reproduce their numbers. For log-probabilities (negative) it is half their harmonic
  mean, which lies ABOVE both directions: it rewards the better direction, not the worse.

With several references per sample, each reference is scored and the results are combined by
``multi_ref``: "mean" averages every number over the references (a direction's count becomes the
rounded mean count) and "max" keeps, per direction and per F variant, the best reference.
"""

from __future__ import annotations

import math
from typing import Sequence

from gptscore_eval.records import DIRECTIONS
from gptscore_eval.templates import Demo, build_prefix, get_aspect, load_demos, templates_for


def avg_f(rh: float, hr: float) -> float:
    return (rh + hr) / 2


def prob_hm_f(rh: float, hr: float) -> float:
    # log(2pq/(p+q)) = log 2 + rh + hr - log(e^rh + e^hr), stable for very negative scores.
    return math.log(2) + rh + hr - _logaddexp(rh, hr)


def legacy_harm_f(rh: float, hr: float) -> float:
    total = rh + hr
    return rh * hr / total if total != 0 else 0.0  # both zero: perfect in both directions


F_SCORES = {"avg_f": avg_f, "prob_hm_f": prob_hm_f, "legacy_harm_f": legacy_harm_f}


def _logaddexp(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def gptscore(
    hyps: Sequence[str],
    refs: Sequence[str | Sequence[str]],
    *,
    scorer,
    srcs: Sequence[str] | None = None,
    directions: Sequence[str] = ("ref_hyp", "hyp_ref"),
    aspect: str | None = None,
    demos: list[Demo] | str | None = None,
    template: str | None = None,
    multi_ref: str = "mean",
) -> list[dict]:
    """Score each hypothesis; one dict per sample.

    Each requested direction maps to ``{"mean", "sum", "count", "truncated"}``; with both
    ``ref_hyp`` and ``hyp_ref`` the dict also holds ``avg_f``, ``prob_hm_f`` and
    ``legacy_harm_f``. ``scorer`` is a GPTScorer or a model name; ``demos`` a list or a file;
    ``template`` a registered name or a template string (default: each direction's own).
    """
    if isinstance(scorer, str):
        from gptscore_eval.scorer import GPTScorer

        scorer = GPTScorer(scorer)
    if multi_ref not in ("mean", "max"):
        raise ValueError(f"multi_ref must be 'mean' or 'max', got {multi_ref!r}")
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if "src_hyp" in directions and (srcs is None or len(srcs) != len(hyps)):
        raise ValueError("direction src_hyp needs one source per hypothesis (srcs=)")
    templates = templates_for(directions, template)
    aspect_ = get_aspect(aspect)
    demos = load_demos(demos) if isinstance(demos, str) else list(demos or [])
    ref_lists = [[r] if isinstance(r, str) else list(r) for r in refs]
    if any(not rs for rs in ref_lists):
        raise ValueError("every sample needs at least one reference")
    # One scored pair per (sample, reference); src_hyp does not depend on the reference.
    owners = [i for i, rs in enumerate(ref_lists) for _ in rs]
    flat_refs = [r for rs in ref_lists for r in rs]
    flat_hyps = [hyps[i] for i in owners]

    per_pair: dict[str, list] = {}
    for direction in directions:
        if direction == "ref_hyp":
            contexts, targets = flat_refs, flat_hyps
        elif direction == "hyp_ref":
            contexts, targets = flat_hyps, flat_refs
        else:  # src_hyp: once per sample, shared by its references
            contexts, targets = list(srcs), list(hyps)
        prefix = build_prefix(aspect_, demos, direction, templates[direction])
        scores = scorer.score(contexts, targets, template=templates[direction], prefix=prefix)
        per_pair[direction] = [scores[i] for i in owners] if direction == "src_hyp" else scores

    results = [[] for _ in hyps]
    for k, i in enumerate(owners):
        results[i].append(_pair_result({d: per_pair[d][k] for d in directions}))
    return [_combine(pairs, multi_ref) for pairs in results]


def _pair_result(scores: dict) -> dict:
    out = {
        d: {"mean": s.mean_logprob, "sum": s.sum_logprob, "count": s.n_tokens, "truncated": s.truncated}
        for d, s in scores.items()
    }
    if "ref_hyp" in out and "hyp_ref" in out:
        rh, hr = out["ref_hyp"]["mean"], out["hyp_ref"]["mean"]
        out.update({name: f(rh, hr) for name, f in F_SCORES.items()})
    return out


def _combine(pairs: list[dict], multi_ref: str) -> dict:
    """One sample's result from its per-reference results."""
    if len(pairs) == 1:
        return pairs[0]
    out = {}
    for d in (d for d in DIRECTIONS if d in pairs[0]):
        entries = [p[d] for p in pairs]
        if multi_ref == "max":
            out[d] = max(entries, key=lambda e: e["mean"])
        else:
            out[d] = {
                "mean": sum(e["mean"] for e in entries) / len(entries),
                "sum": sum(e["sum"] for e in entries) / len(entries),
                "count": max(1, round(sum(e["count"] for e in entries) / len(entries))),
                "truncated": any(e["truncated"] for e in entries),
            }
    for name in (n for n in F_SCORES if n in pairs[0]):
        values = [p[name] for p in pairs]
        out[name] = max(values) if multi_ref == "max" else sum(values) / len(values)
    return out
