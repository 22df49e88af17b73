"""gptscore_eval.stats: formulas against hand-computed values, and the statistical properties
(CI coverage, p-value calibration) checked by seeded simulation with small resample counts."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from gptscore_eval import stats

# Simulation sizes: enough to tell a calibrated procedure from a broken one, small enough to run
# in seconds. With 400 simulations the binomial sd of a 95% coverage rate is about 0.011.
SIMULATIONS = 400
RESAMPLES = 999


# ---------------------------------------------------------------------------------------------
# Formulas


def test_log_harmonic_mean_hand_computed():
    # HM(0.5, 0.25) = 2 / (1/0.5 + 1/0.25) = 1/3
    assert stats.log_harmonic_mean([math.log(0.5), math.log(0.25)]) == pytest.approx(math.log(1 / 3))
    # HM(0.2, 0.2, 0.8) = 3 / (5 + 5 + 1.25) = 4/15
    assert stats.log_harmonic_mean(np.log([0.2, 0.2, 0.8])) == pytest.approx(math.log(4 / 15))


def test_log_harmonic_mean_is_stable_far_from_zero():
    # exp(-1000) underflows to 0; in log space: log(2 / (e^1000 + e^1001)) = log 2 - 1000 - log(1 + e)
    value = stats.log_harmonic_mean([-1000.0, -1001.0])
    assert value == pytest.approx(math.log(2) - 1000 - math.log(1 + math.e), rel=1e-12)


def test_prob_hm_f_is_the_two_direction_harmonic_mean_and_follows_the_worse_direction():
    rh, hr = -0.1, -5.0
    p, q = math.exp(rh), math.exp(hr)
    prob_hm_f = math.log(2 * p * q / (p + q))  # DESIGN.md section 5
    assert stats.log_harmonic_mean([rh, hr]) == pytest.approx(prob_hm_f)
    assert hr < prob_hm_f < hr + math.log(2)  # dominated by the worse direction
    legacy_harm_f = rh * hr / (rh + hr)  # published formula: for log-scores (< 0) ...
    assert legacy_harm_f > rh  # ... it is better than even the better direction
    assert (rh + hr) / 2 == pytest.approx(-2.55)  # avg_f


def test_summarize_matches_numpy():
    values = [-1.0, -2.0, -4.0, -0.5]
    s = stats.summarize(values, n_resamples=RESAMPLES)
    assert s.n == 4
    assert s.mean == pytest.approx(np.mean(values))
    assert s.hmean == pytest.approx(math.log(4 / np.sum(np.exp(-np.array(values)))))
    assert s.mean_ci[0] <= s.mean <= s.mean_ci[1]
    assert s.hmean_ci[0] <= s.hmean <= s.hmean_ci[1]
    assert s.notes == ()


def test_harmonic_mean_interval_is_scipy_s_bca_interval_of_the_log_harmonic_mean():
    values = np.array([-1.0, -2.0, -4.0, -0.5, -3.0, -1.5])
    s = stats.summarize(values, n_resamples=RESAMPLES, seed=3)
    # The statistic itself is checked against hand-computed values above; here, that the interval
    # is scipy's BCa interval of exactly that statistic, at the given level and seed.
    expected = sps.bootstrap((values,), stats.log_harmonic_mean, n_resamples=RESAMPLES, vectorized=True,
                             method="BCa", rng=np.random.default_rng(3)).confidence_interval
    assert s.hmean_ci == pytest.approx(tuple(expected), rel=1e-12)


def test_summarize_one_sample_has_no_interval_and_says_so():
    s = stats.summarize([-1.5])
    assert (s.mean, s.hmean, s.mean_ci, s.hmean_ci) == (-1.5, -1.5, None, None)
    assert any("fewer than 2 samples" in n for n in s.notes)


def test_summarize_all_equal_samples_give_a_point_interval():
    s = stats.summarize([-2.0] * 5)
    assert s.mean_ci == (-2.0, -2.0) and s.hmean_ci == pytest.approx((-2.0, -2.0))
    assert any("all values are equal" in n for n in s.notes)


def test_interval_falls_back_to_percentile_where_bca_is_undefined():
    # A median with heavy ties: the jackknife acceleration is 0/0, so BCa gives NaN.
    ci, note = stats.confidence_interval([1.0, 1.0, 1.0, 1.0, 2.0], lambda x, axis=-1: np.median(x, axis=axis),
                                         n_resamples=RESAMPLES)
    assert ci == (1.0, 2.0) and "percentile" in note


def test_summarize_rejects_non_finite_values():
    with pytest.raises(ValueError, match="NaN or infinite"):
        stats.summarize([-1.0, float("nan")])


def test_seed_makes_intervals_reproducible():
    values = np.random.default_rng(0).normal(size=20)
    assert stats.summarize(values, seed=3, n_resamples=RESAMPLES) == stats.summarize(values, seed=3, n_resamples=RESAMPLES)


def test_holm_hand_computed():
    # sorted: 0.01*4 = 0.04, 0.03*3 = 0.09, 0.04*2 = 0.08 -> 0.09 (monotone), 0.5*1 = 0.5
    assert stats.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert stats.holm([0.3, 0.6]) == pytest.approx([0.6, 0.6])
    assert stats.holm([0.9, 0.8, 0.7]) == pytest.approx([1.0, 1.0, 1.0])  # capped at 1
    assert stats.holm([]) == []


def test_holm_rejects_non_probabilities():
    with pytest.raises(ValueError):
        stats.holm([0.5, 1.5])


# ---------------------------------------------------------------------------------------------
# compare


def test_compare_counts_and_effect_size():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    b = np.array([0.5, 2.0, 3.5, 3.0, 4.0])
    c = stats.compare(a, b, n_resamples=RESAMPLES)
    d = a - b
    assert c.n == 5
    assert (c.wins, c.ties, c.losses) == (3, 1, 1)
    assert c.diff == pytest.approx(d.mean())
    assert c.effect_size == pytest.approx(d.mean() / d.std(ddof=1))
    assert c.p_wilcoxon == pytest.approx(sps.wilcoxon(d).pvalue)
    assert c.diff_ci[0] <= c.diff <= c.diff_ci[1]


def test_compare_identical_samples_is_not_significant():
    a = [-1.0, -2.0, -3.0]
    c = stats.compare(a, a, n_resamples=RESAMPLES)
    assert (c.diff, c.diff_ci, c.p_bootstrap, c.p_randomization, c.p_wilcoxon) == (0.0, (0.0, 0.0), 1.0, 1.0, 1.0)
    assert c.effect_size is None and (c.wins, c.ties, c.losses) == (0, 3, 0)


def test_p_values_never_reach_zero():
    # 30 equal positive differences: no sign flip or resample is as extreme, so both tests give
    # the smallest p their resample count allows, 1 / (R + 1), never 0.
    c = stats.compare(np.zeros(30) + 1.0, np.zeros(30), n_resamples=RESAMPLES)
    assert c.p_randomization == c.p_bootstrap == 1 / (RESAMPLES + 1)


def test_compare_one_pair_has_no_test():
    c = stats.compare([-1.0], [-2.0])
    assert c.diff == 1.0 and c.diff_ci is None and c.p_randomization is None and c.wins == 1
    assert any("fewer than 2 samples" in n for n in c.notes)


@pytest.mark.parametrize("a, b, message", [([1.0, 2.0], [1.0], "equal lengths"), ([], [], "no paired")])
def test_compare_rejects_bad_input(a, b, message):
    with pytest.raises(ValueError, match=message):
        stats.compare(a, b)


def _simulated_pvalues(shift: float, simulations: int, n: int = 30) -> dict[str, np.ndarray]:
    """p-values of paired samples whose true mean difference is ``shift`` (sd of differences 1)."""
    rng = np.random.default_rng(2024)
    out = {"p_bootstrap": [], "p_randomization": [], "p_wilcoxon": []}
    for i in range(simulations):
        base = rng.normal(-2.0, 1.0, n)  # per-prompt difficulty, shared by both strategies
        c = stats.compare(base + shift + rng.normal(0, 1, n), base, n_resamples=RESAMPLES, seed=i)
        for name in out:
            out[name].append(getattr(c, name))
    return {name: np.array(p) for name, p in out.items()}


def test_pvalues_are_uniform_under_the_null():
    for name, p in _simulated_pvalues(0.0, SIMULATIONS).items():
        # Tolerance: a calibrated test rejects 5% +- 3.3 binomial sd (sd = 0.011 at 400 runs).
        # The shifted bootstrap is known to run slightly liberal (about 6% at n = 30).
        assert 0.014 <= np.mean(p < 0.05) <= 0.086, name
        assert sps.kstest(p, "uniform").pvalue > 0.001, name


def test_pvalues_are_small_under_a_real_shift():
    for name, p in _simulated_pvalues(1.0, 50).items():  # d_z = 1 at n = 30: power > 0.999
        assert np.mean(p < 0.05) >= 0.98, name


# ---------------------------------------------------------------------------------------------
# Coverage of the BCa intervals


def _coverage(draw, true_value: float, statistic, simulations: int = SIMULATIONS) -> float:
    rng = np.random.default_rng(7)
    hits = 0
    for i in range(simulations):
        ci, _ = stats.confidence_interval(draw(rng), statistic, n_resamples=RESAMPLES, seed=i)
        hits += ci[0] <= true_value <= ci[1]
    return hits / simulations


def test_mean_interval_covers_the_true_mean_at_the_nominal_rate():
    # BCa at n = 50 covers about 94%; the band allows 3.3 binomial sd below and 3 above 95%.
    coverage = _coverage(lambda rng: rng.normal(-2.0, 0.7, 50), -2.0, lambda x, axis=-1: np.mean(x, axis=axis))
    assert 0.90 <= coverage <= 0.985


def test_harmonic_mean_interval_covers_the_true_harmonic_mean():
    # exp(X) for X ~ N(mu, s^2) is log-normal; its harmonic mean is exp(mu - s^2 / 2).
    # Fewer simulations (logsumexp is slower than a mean), so a band of 3.5 sd (sd = 0.014).
    mu, s = -2.0, 0.5
    coverage = _coverage(lambda rng: rng.normal(mu, s, 50), mu - s**2 / 2, stats.log_harmonic_mean, 250)
    assert 0.89 <= coverage <= 0.99


# ---------------------------------------------------------------------------------------------
# From score records to paired samples


def _score(id_, strategy, rh, *, scorer="smol", aspect="qa", num_chunks=None, **extra):
    record = {"id": id_, "strategy": strategy, "scorer": scorer, "aspect": aspect, "template": "t",
              "ref_hyp": {"mean": rh, "sum": 4 * rh, "count": 4}, **extra}
    if num_chunks is not None:
        record["num_chunks"] = num_chunks
    return record


def test_select_scores_pairs_by_id_and_defaults_the_field():
    records = [_score("b", "default", -1.0), _score("a", "default", -2.0),
               _score("a", "optimized", -2.5), _score("b", "optimized", -0.5)]
    scores = stats.select_scores(records)
    assert scores.field == "ref_hyp"  # no avg_f in these records: a direction's mean
    assert scores.ids == ["a", "b"]
    assert scores.sample("default").tolist() == [-2.0, -1.0]
    assert scores.sample("optimized").tolist() == [-2.5, -0.5]
    with_f = [dict(r, avg_f=r["ref_hyp"]["mean"] + 1) for r in records]
    assert stats.select_scores(with_f).field == "avg_f"
    assert stats.select_scores(with_f, field="ref_hyp").sample("default").tolist() == [-2.0, -1.0]


def test_select_scores_rejects_mixed_scorers_and_aspects_listing_them():
    records = [_score("a", "default", -1.0), _score("a", "default", -1.0, scorer="big")]
    with pytest.raises(ValueError, match=r"2 scorers \('big' \(1 records\), 'smol' \(1 records\)\).*--scorer"):
        stats.select_scores(records)
    assert stats.select_scores(records, scorer="big").scorer == "big"
    records = [_score("a", "default", -1.0), _score("a", "default", -1.0, aspect="fluency")]
    with pytest.raises(ValueError, match="aspects.*--aspect"):
        stats.select_scores(records)
    with pytest.raises(ValueError, match="no records with aspect 'nope'"):
        stats.select_scores(records, aspect="nope")


def test_select_scores_lists_unpaired_ids_unless_allowed():
    records = [_score(f"q{i}", "default", -1.0) for i in range(8)] + [_score("q0", "optimized", -1.0)]
    with pytest.raises(ValueError, match=r"optimized lacks 7 \(q1, q2, q3, q4, q5 and 2 more\).*--allow-unpaired"):
        stats.select_scores(records)
    scores = stats.select_scores(records, allow_unpaired=True)
    assert scores.ids == ["q0"] and scores.dropped == {"default": 7}


def test_select_scores_rejects_duplicates_and_missing_fields():
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        stats.select_scores([_score("a", "default", -1.0), _score("a", "default", -2.0)])
    with pytest.raises(ValueError, match="'hyp_ref' is missing in 1 records: a/default"):
        stats.select_scores([_score("a", "default", -1.0)], field="hyp_ref")


def test_select_scores_rejects_an_id_with_two_prompt_lengths():
    records = [_score("a", "default", -1.0, num_chunks=1), _score("a", "optimized", -2.0, num_chunks=2)]
    with pytest.raises(ValueError, match="id 'a' has num_chunks 1 and 2"):
        stats.select_scores(records)


def test_select_scores_buckets_from_records_or_a_mapping():
    records = [_score("a", "default", -1.0, num_chunks=1), _score("b", "default", -2.0, num_chunks=2)]
    assert stats.select_scores(records).num_chunks == {"a": 1, "b": 2}
    plain = [_score("a", "default", -1.0), _score("b", "default", -2.0)]
    scores = stats.select_scores(plain, num_chunks={"a": 4, "b": 4})
    assert scores.buckets() == [4] and scores.sample("default", 4).tolist() == [-1.0, -2.0]


def test_analyse_compares_with_the_baseline_per_bucket_with_holm():
    rng = np.random.default_rng(1)
    records = [_score(f"q{i}", s, float(rng.normal(-2 + shift, 0.3)), num_chunks=1 + i % 2)
               for s, shift in (("default", 0), ("optimized", 0), ("independent", -0.5)) for i in range(12)]
    a = stats.analyse(stats.select_scores(records), n_resamples=RESAMPLES)
    assert a["baseline"] == "default" and list(a["strategies"]) == ["default", "independent", "optimized"]
    assert set(a["strategies"]["default"]) == {"all", "1", "2"}
    overall = [c for c in a["comparisons"] if c["num_chunks"] is None]
    assert [c["strategy"] for c in overall] == ["independent", "optimized"]
    assert [c["p_randomization_holm"] for c in overall] == pytest.approx(stats.holm([c["p_randomization"] for c in overall]))
    assert len(a["comparisons"]) == 6  # 2 strategies x (all + 2 buckets)
    with pytest.raises(ValueError, match="baseline 'nope' is not among the strategies"):
        stats.analyse(stats.select_scores(records), baseline="nope")
