"""gptscore_eval.plots: every figure kind renders a non-empty PNG and SVG with labelled axes."""

import numpy as np
import pytest

from gptscore_eval import plots
from gptscore_eval.perf import performance
from gptscore_eval.stats import ScoreSet, analyse

STRATEGIES = ("default", "optimized", "independent")
BUCKETS = (1, 2, 4)


@pytest.fixture(scope="module")
def scores() -> ScoreSet:
    rng = np.random.default_rng(0)
    ids = [f"q{i}" for i in range(12)]
    values = {s: {i: float(rng.normal(-2 - 0.3 * (s == "independent"), 0.4)) for i in ids} for s in STRATEGIES}
    return ScoreSet("avg_f", "smol", "qa", "t", values, {i: BUCKETS[k % 3] for k, i in enumerate(ids)}, {})


@pytest.fixture(scope="module")
def analysis(scores) -> dict:
    return analyse(scores, n_resamples=199)


def _output(strategy: str, num_chunks: int, rng, memory: bool = True) -> dict:
    total = 0.1 * num_chunks + rng.exponential(0.01)
    return {"strategy": strategy, "num_chunks": num_chunks, "device": "cpu", "model": "m",
            "timings": {"prefill_s": total / 3, "decode_s": list(rng.uniform(0.01, 0.02, 5)), "total_s": total,
                        "tokens_per_s": 6 / total},
            "peak_memory_bytes": int(num_chunks * 2**30) if memory else None}


@pytest.fixture(scope="module")
def perf() -> dict:
    rng = np.random.default_rng(1)
    return performance([_output(s, b, rng) for s in STRATEGIES for b in BUCKETS for _ in range(4)], n_resamples=199)


def _check_saved(fig, tmp_path, name):
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    png, svg = plots.save(fig, tmp_path / name, formats=("png", "svg"))
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 5000
    assert b"<svg" in svg.read_bytes()[:1000] and svg.stat().st_size > 5000


@pytest.mark.parametrize("kind", list(plots.SCORE_KINDS))
def test_score_figures_render(kind, scores, analysis, tmp_path):
    _check_saved(plots.SCORE_KINDS[kind](scores, analysis), tmp_path, kind)


@pytest.mark.parametrize("kind", list(plots.PERFORMANCE_KINDS))
def test_performance_figures_render(kind, perf, tmp_path):
    _check_saved(plots.PERFORMANCE_KINDS[kind](perf), tmp_path, kind)


def test_a_figure_path_without_a_format_suffix_is_refused(perf, tmp_path):
    fig = plots.PERFORMANCE_KINDS["latency"](perf)
    for name in ("latency", "latency.txt"):
        with pytest.raises(ValueError, match="end it in .png, .svg or .pdf"):
            plots.save(fig, tmp_path / name)
    assert list(tmp_path.iterdir()) == []
    assert plots.save(fig, tmp_path / "latency.PDF") == [tmp_path / "latency.PDF"]


def test_score_label_names_the_units():
    assert "nats" in plots.score_label("ref_hyp") and "ref→hyp" in plots.score_label("ref_hyp")


def test_figures_that_lack_their_data_say_why():
    rng = np.random.default_rng(2)
    no_memory = performance([_output("default", 1, rng, memory=False) for _ in range(3)], n_resamples=199)
    with pytest.raises(ValueError, match="no peak memory measured"):
        plots.memory(no_memory)
    one = ScoreSet("ref_hyp", "smol", "qa", "t", {"default": {"a": -1.0, "b": -2.0}}, {}, {})
    one_analysis = analyse(one, n_resamples=199)
    with pytest.raises(ValueError, match="no num_chunks"):
        plots.score_by_chunks(one_analysis)
    with pytest.raises(ValueError, match="only one strategy"):
        plots.paired_differences(one, one_analysis)


def test_performance_medians_and_p90_match_numpy(perf):
    rng = np.random.default_rng(1)  # the same draws as the perf fixture
    rows = [_output(s, b, rng) for s in STRATEGIES for b in BUCKETS for _ in range(4)]
    totals = [r["timings"]["total_s"] for r in rows if r["strategy"] == "optimized" and r["num_chunks"] == 2]
    latency = perf["strategies"]["optimized"]["2"]["latency_s"]
    assert latency["n"] == 4 and latency["median"] == pytest.approx(np.median(totals))
    assert latency["p90"] == pytest.approx(np.percentile(totals, 90))
    assert latency["median_ci"][0] <= latency["median"] <= latency["median_ci"][1]
    memory = perf["strategies"]["default"]["all"]["peak_memory_bytes"]
    assert memory["median"] == 2 * 2**30 and memory["n"] == 12
    # inter-token latency: per output the median of its decode steps, then their median
    per_output = [np.median(r["timings"]["decode_s"]) for r in rows if r["strategy"] == "optimized" and r["num_chunks"] == 2]
    assert perf["strategies"]["optimized"]["2"]["inter_token_s"]["median"] == pytest.approx(np.median(per_output))
