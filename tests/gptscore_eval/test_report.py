"""`gptscore report` / `gptscore plot` and gptscore_eval.report on fixture files: the report states
the numbers computed here independently with numpy; user errors are one line with exit status 1."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from gptscore_eval import records
from gptscore_eval.cli import main
from gptscore_eval.report import Options, write_report

RESAMPLES = "999"
BUCKETS = (1, 2)
PER_BUCKET = 6
SHIFT = {"default": 0.0, "optimized": 0.0, "independent": -0.5}  # independent is clearly worse


def _direction(mean: float) -> dict:
    return {"mean": mean, "sum": 8 * mean, "count": 8}


def build_fixture(directory, *, strategies=tuple(SHIFT), scorers=("smol",), skip=()):
    """outputs.jsonl and scores.jsonl for PER_BUCKET prompts per bucket; ``skip``: (id, strategy) left out."""
    rng = np.random.default_rng(42)
    ids = [(f"q{b}-{i}", b) for b in BUCKETS for i in range(PER_BUCKET)]
    difficulty = {i: rng.normal(-2.0, 0.5) for i, _ in ids}
    outputs, scores = [], []
    for strategy in strategies:
        for i, b in ids:
            if (i, strategy) in skip:
                continue
            total = 0.2 * b * (0.5 if strategy == "optimized" else 1.0) + rng.uniform(0, 0.01)
            outputs.append({
                "id": i, "strategy": strategy, "chunk_size": 256, "model": "bamba-4l", "prompt": "Q?",
                "reference": "A.", "output": "A!", "prompt_tokens": 200 * b, "output_tokens": 4, "num_chunks": b,
                "generation": {"do_sample": False}, "device": "cpu", "peak_memory_bytes": b * 2**30,
                "timings": {"prefill_s": total / 2, "decode_s": [total / 8] * 3, "total_s": total,
                            "tokens_per_s": 4 / total},
            })
            rh = difficulty[i] + SHIFT[strategy] + rng.normal(0, 0.05)
            hr = rh - 0.3 + rng.normal(0, 0.05)
            for scorer in scorers:
                scores.append({"id": i, "strategy": strategy, "scorer": scorer, "aspect": "qa", "template": "t",
                               "ref_hyp": _direction(rh), "hyp_ref": _direction(hr), "avg_f": (rh + hr) / 2})
    records.write_records(directory / "outputs.jsonl", "outputs", outputs)
    records.write_records(directory / "scores.jsonl", "scores", scores)
    return outputs, scores


def _values(rows, strategy, value, bucket=None):
    """A field of the fixture rows of one strategy in id order (as the report pairs them)."""
    chosen = sorted((r for r in rows if r["strategy"] == strategy and (bucket is None or bucket in r["id"])),
                    key=lambda r: r["id"])
    return np.array([value(r) for r in chosen])


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    directory = tmp_path_factory.mktemp("report")
    outputs, scores = build_fixture(directory)
    result = CliRunner().invoke(main, ["report", str(directory / "scores.jsonl"), str(directory / "outputs.jsonl"),
                                       "--out", str(directory / "out"), "--resamples", RESAMPLES])
    assert result.exit_code == 0, result.output
    out = directory / "out"
    return {"outputs": outputs, "scores": scores, "out": out, "stdout": result.output,
            "md": (out / "report.md").read_text(), "summary": json.loads((out / "summary.json").read_text())}


def test_report_states_the_means_per_strategy(reported):
    avg_f = lambda r: r["avg_f"]
    for strategy in SHIFT:
        values = _values(reported["scores"], strategy, avg_f)
        hmean = np.log(values.size / np.sum(np.exp(-values)))
        assert f"| {strategy} | {values.size} | {values.mean():.4f} |" in reported["md"]
        assert f"| {hmean:.4f} |" in reported["md"]
        summary = reported["summary"]["scores"]["strategies"][strategy]["all"]
        assert summary["mean"] == pytest.approx(values.mean()) and summary["hmean"] == pytest.approx(hmean)
        for bucket in BUCKETS:
            by_bucket = _values(reported["scores"], strategy, avg_f, bucket=f"q{bucket}-")
            assert reported["summary"]["scores"]["strategies"][strategy][str(bucket)]["mean"] == pytest.approx(by_bucket.mean())


def test_report_states_each_comparison_in_a_sentence(reported):
    avg_f = lambda r: r["avg_f"]
    baseline = _values(reported["scores"], "default", avg_f)
    comparisons = [c for c in reported["summary"]["scores"]["comparisons"] if c["num_chunks"] is None]
    raw = [c["p_randomization"] for c in comparisons]
    holm = [min(1.0, max(2 * min(raw), p if p == max(raw) else 2 * p)) for p in raw]  # Holm for 2 tests
    for c, expected_p in zip(comparisons, holm):
        diff = (_values(reported["scores"], c["strategy"], avg_f) - baseline).mean()
        assert c["diff"] == pytest.approx(diff)
        assert c["p_randomization_holm"] == pytest.approx(expected_p)
        low, high = c["diff_ci"]
        verdict = "significant" if expected_p < 0.05 else "not significant"
        sentence = re.search(rf"{c['strategy']} vs default: difference (\S+) \[(\S+), (\S+)\], p (.+?) \(Holm\), (.+?) at", reported["md"])
        assert sentence, c["strategy"]
        assert [float(x) for x in sentence.groups()[:3]] == pytest.approx([diff, low, high], abs=6e-5)
        assert sentence.group(5) == verdict
        stated = sentence.group(4)  # the Holm-adjusted p, not the raw one
        assert stated == "< 0.001" if expected_p < 0.001 else float(stated.removeprefix("= ")) == pytest.approx(expected_p, rel=5e-3)
    independent = next(c for c in comparisons if c["strategy"] == "independent")
    assert independent["p_randomization_holm"] < 0.05 and independent["losses"] == len(baseline)
    assert "significant at α = 0.05 (independent worse)" in reported["md"]  # it scores lower
    assert "independent vs default" in reported["stdout"]


def test_report_states_the_performance_medians(reported):
    for bucket in BUCKETS:
        totals = _values(reported["outputs"], "optimized", lambda r: r["timings"]["total_s"], bucket=f"q{bucket}-")
        perf = reported["summary"]["performance"]["strategies"]["optimized"][str(bucket)]
        assert perf["latency_s"]["median"] == pytest.approx(np.median(totals))
        assert perf["latency_s"]["p90"] == pytest.approx(np.percentile(totals, 90))
        assert f"| {np.median(totals):.4g} [" in reported["md"]
    assert "### Peak memory [GiB]" in reported["md"]


def test_report_links_every_figure(reported):
    figures = reported["summary"]["figures"]
    assert len(figures) == 9  # 4 score kinds + 5 performance kinds
    for png, svg in figures:
        assert (reported["out"] / png).stat().st_size > 0 and (reported["out"] / svg).stat().st_size > 0
        assert f"]({png})" in reported["md"]


def test_report_from_outputs_alone(tmp_path):
    build_fixture(tmp_path)
    summary = write_report([tmp_path / "outputs.jsonl"], tmp_path / "out", Options(n_resamples=199))
    assert summary["scores"] is None and summary["performance"]["devices"] == ["cpu"]
    assert "## Performance" in (tmp_path / "out" / "report.md").read_text()


def test_allow_unpaired_analyses_the_intersection_and_says_so(tmp_path):
    build_fixture(tmp_path, skip={("q1-0", "optimized"), ("q1-1", "optimized")})
    summary = write_report([tmp_path / "scores.jsonl"], tmp_path / "out", Options(allow_unpaired=True, n_resamples=199))
    assert summary["scores"]["n_ids"] == len(BUCKETS) * PER_BUCKET - 2
    assert summary["scores"]["dropped_unpaired"] == {"default": 2, "independent": 2}
    assert "Unpaired ids left out (--allow-unpaired): 2 of default, 2 of independent" in (tmp_path / "out" / "report.md").read_text()


def test_plot_command_draws_one_figure(tmp_path):
    build_fixture(tmp_path)
    runner = CliRunner()
    for kind, source in (("differences", "scores.jsonl"), ("latency", "outputs.jsonl")):
        out = tmp_path / f"{kind}.png"
        result = runner.invoke(main, ["plot", kind, str(tmp_path / source), "--out", str(out), "--resamples", "199"])
        assert result.exit_code == 0, result.output
        assert out.read_bytes().startswith(b"\x89PNG")
    for kind in ("distribution", "means", "by-chunks", "ttft", "inter-token", "throughput", "memory"):
        assert kind in runner.invoke(main, ["plot", "--help"]).output


@pytest.mark.parametrize("fixture, args, message", [
    ({"scorers": ("smol", "big")}, ["report", "{scores}"], "records mix 2 scorers ('big' (36 records), 'smol' (36 records)); choose one with --scorer"),
    ({"skip": {("q2-5", "optimized")}}, ["report", "{scores}"], "ids not scored for every strategy: optimized lacks 1 (q2-5)"),
    ({}, ["report", "{scores}", "--baseline", "nope"], "baseline 'nope' is not among the strategies"),
    ({}, ["report", "{scores}", "{scores}"], "two scores files given"),
    ({}, ["report", "{dir}/missing.jsonl"], "missing.jsonl: no such file"),
    ({}, ["plot", "violin", "{scores}"], "unknown plot kind 'violin'"),
    ({}, ["plot", "latency", "{scores}"], "plot 'latency' needs an outputs file"),
])
def test_user_errors_are_one_line_with_exit_status_1(tmp_path, fixture, args, message):
    build_fixture(tmp_path, **fixture)
    argv = [a.format(scores=tmp_path / "scores.jsonl", dir=tmp_path) for a in args]
    out = ["--out", str(tmp_path / ("out.png" if argv[0] == "plot" else "out"))]
    result = CliRunner().invoke(main, [*argv, *out, "--resamples", "199"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error: ")
    assert message in result.output


def test_report_of_one_strategy_says_there_is_nothing_to_compare(tmp_path):
    build_fixture(tmp_path, strategies=("default",))
    summary = write_report([tmp_path / "scores.jsonl"], tmp_path / "out", Options(n_resamples=199))
    assert summary["scores"]["comparisons"] == [] and summary["sentences"] == []
    md = (tmp_path / "out" / "report.md").read_text()
    assert "one strategy (`default`): nothing to compare." in md and "Tests against the baseline" not in md


def test_a_second_report_into_the_same_directory_leaves_only_its_own_figures(tmp_path):
    build_fixture(tmp_path)
    write_report([tmp_path / "scores.jsonl", tmp_path / "outputs.jsonl"], tmp_path / "out", Options(n_resamples=199))
    summary = write_report([tmp_path / "outputs.jsonl"], tmp_path / "out", Options(n_resamples=199))
    on_disk = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out" / "figures").iterdir())
    assert on_disk == sorted(path for pair in summary["figures"] for path in pair)
    assert not any(kind in " ".join(on_disk) for kind in ("distribution", "means", "by-chunks", "differences"))


def test_scores_and_outputs_of_different_runs_are_refused(tmp_path):
    build_fixture(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    outputs = [{**r, "id": "z" + r["id"]} for r in records.read_records(tmp_path / "outputs.jsonl").records]
    records.write_records(other / "outputs.jsonl", "outputs", outputs)
    with pytest.raises(ValueError, match="other/outputs.jsonl: none of the ids scored in .*scores.jsonl is in it"):
        write_report([tmp_path / "scores.jsonl", other / "outputs.jsonl"], tmp_path / "out", Options(n_resamples=199))


def test_confidence_levels_are_not_rounded_in_labels(tmp_path):
    build_fixture(tmp_path)
    write_report([tmp_path / "scores.jsonl", tmp_path / "outputs.jsonl"], tmp_path / "out",
                 Options(confidence=0.999, n_resamples=199))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "99.9% BCa bootstrap" in md and "Medians with 99.9% bootstrap" in md and "100%" not in md


def test_a_strategy_keeps_its_colour_whatever_the_order():
    from gptscore_eval.plots import _style

    assert _style(["optimized", "default"]) == _style(["default", "optimized"])


def test_report_states_how_several_references_were_combined(tmp_path):
    """DESIGN §5: with several references, mean or max, stated. The rule comes from the settings of
    the run that wrote the scores; the count from the outputs file, which holds the references."""
    outputs, scores = build_fixture(tmp_path)
    several = {"q1-0", "q2-3"}
    outputs = [{**r, "reference": ["A.", "B."]} if r["id"] in several else r for r in outputs]
    records.write_records(tmp_path / "outputs.jsonl", "outputs", outputs)
    lines = [{"_meta": {"run_id": "r1", "settings": {"multi_ref": "max"}}}, *({**r, "run_id": "r1"} for r in scores)]
    (tmp_path / "scores.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = write_report([tmp_path / "scores.jsonl", tmp_path / "outputs.jsonl"], tmp_path / "out",
                           Options(n_resamples=199))
    n = len(BUCKETS) * PER_BUCKET
    assert summary["scores"]["references"] == {"several": 2, "prompts": n, "multi_ref": ["max"]}
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"2 of the {n} prompts have several references; their scores combine the references by `max`" in md
    single = write_report([tmp_path / "scores.jsonl"], tmp_path / "out2", Options(n_resamples=199))
    assert single["scores"]["references"] is None  # no outputs file: the references are not known


def test_report_says_nothing_of_references_when_each_prompt_has_one(reported):
    assert reported["summary"]["scores"]["references"]["several"] == 0
    assert "several references" not in reported["md"]
