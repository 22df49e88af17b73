"""`gptscore score` end to end with the real default scorer: scores file, table, resumability,
and one-line errors for bad input."""

import json

import pytest
from click.testing import CliRunner

from gptscore_eval import records
from gptscore_eval.cli import main
from gptscore_eval.scorer import GPTScorer
from gptscore_eval.scoring import score_outputs

QA = [
    ("q1", "What does HTTP 404 mean?", "The server could not find the requested page."),
    ("q2", "Why do we sort before binary search?", "Binary search needs sorted data to discard half at each step."),
    ("q3", "What is a mutex?", "A lock that lets only one thread enter a critical section at a time."),
]
ANSWERS = {
    "default": ["It means the page you asked for was not found.", "Because halving only works on sorted input.",
                "A mutex is a lock allowing one thread at a time."],
    "independent": ["The page was not found by the server.", "Sorting lets the search discard half the items.",
                    ""],  # an empty generation: not scored, reported
}


def output_record(qid, prompt, reference, strategy, output):
    return {
        "id": qid, "strategy": strategy, "chunk_size": 256, "model": "tiny", "prompt": prompt,
        "reference": reference, "output": output, "prompt_tokens": 12, "output_tokens": len(output.split()),
        "num_chunks": 1, "generation": {"do_sample": False}, "device": "cpu", "peak_memory_bytes": None,
        "timings": {"prefill_s": 0.01, "total_s": 0.1, "tokens_per_s": 100.0},
    }


@pytest.fixture
def outputs(tmp_path):
    path = tmp_path / "outputs.jsonl"
    rows = [output_record(q, p, r, s, ANSWERS[s][i]) for s in ANSWERS for i, (q, p, r) in enumerate(QA)]
    records.write_records(path, "outputs", rows)
    return path


@pytest.fixture(scope="module")
def smol(default_scorer_installed):
    return GPTScorer(device="cpu", dtype="float32")


def run(*args):
    return CliRunner().invoke(main, ["score", *map(str, args)])


def test_score_end_to_end_and_rerun_adds_nothing(outputs, tmp_path, default_scorer_installed):
    out = tmp_path / "scores.jsonl"
    result = run(outputs, "--out", out, "--aspects", "plain,consistency", "--device", "cpu")
    assert result.exit_code == 0, result.output
    scores = records.read_records(out, "scores")
    assert len(scores.records) == 2 * 5 and len(scores.meta) == 1
    record = scores.records[0]
    assert record["scorer"] == "smollm2-135m-instruct" and record["template"] == "paraphrase"
    assert {"ref_hyp", "hyp_ref", "avg_f", "prob_hm_f", "legacy_harm_f"} <= set(record)
    assert "default" in result.output and "independent" in result.output and "prob_hm_f" in result.output
    assert "skipped 1 empty outputs (not scored): q3/independent" in result.output

    before = out.read_bytes()
    again = run(outputs, "--out", out, "--aspects", "plain,consistency", "--device", "cpu")
    assert again.exit_code == 0 and "0 records written" in again.output
    assert out.read_bytes() == before


def test_interrupted_run_is_completed_by_rerun(outputs, tmp_path, smol):
    out = tmp_path / "scores.jsonl"

    class Interrupted(Exception):
        pass

    class FailsOnSecondChunk:
        name = smol.name

        def __init__(self):
            self.calls = 0

        def score(self, *args, **kwargs):
            self.calls += 1
            if self.calls > 2:  # two directions per chunk: die in the second chunk
                raise Interrupted
            return smol.score(*args, **kwargs)

    with pytest.raises(Interrupted):
        score_outputs(outputs, out, scorer=FailsOnSecondChunk(), chunk_size=2, progress=False)
    assert len(records.read_records(out, "scores").records) == 2
    summary = score_outputs(outputs, out, scorer=smol, chunk_size=2, progress=False)
    assert summary["written"] == 3
    complete = records.read_records(out, "scores")  # validates: no duplicate keys
    assert len(complete.records) == 5 and len(complete.meta) == 2

    fresh = tmp_path / "fresh.jsonl"
    score_outputs(outputs, fresh, scorer=smol, progress=False)
    by_key = {(r["id"], r["strategy"]): r["avg_f"] for r in records.read_records(fresh, "scores").records}
    for r in complete.records:
        assert r["avg_f"] == pytest.approx(by_key[r["id"], r["strategy"]], abs=1e-4)


def test_src_hyp_with_demos_and_a_template_string(outputs, tmp_path, smol):
    out = tmp_path / "scores.jsonl"
    summary = score_outputs(outputs, out, scorer=smol, directions=("src_hyp",), demos="qa", aspects=("relevance",),
                            template="Q: {context}\nA: {target}", progress=False)
    assert summary["strategies"]["default"]["relevance"]["n"] == 3
    [record, *_] = records.read_records(out, "scores").records
    assert set(record) >= {"src_hyp"} and "avg_f" not in record and record["template"] == "Q: {context}\nA: {target}"


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.jsonl"], "no such file"),
        (["BAD", "--aspects", "beauty"], "unknown aspect 'beauty'"),
        (["BAD", "--directions", "hyp_src"], "unknown direction 'hyp_src'"),
        (["BAD", "--template", "{target} {context}"], "must end with {target}"),
        (["BAD", "--demos", "none.json"], "no such demonstrations file"),
        (["BAD", "--batch-size", "zero"], "batch size must be a positive integer"),
        (["BAD", "--scorer", "/no/such/model/dir"], "cannot load scorer '/no/such/model/dir': no such directory"),
        (["BAD", "--scorer", "./no_such_dir"], "cannot load scorer './no_such_dir': no such directory"),
        (["BAD", "--dtype", "int3"], "unknown dtype"),
        (["BAD", "--device", "gpu0"], "device: 'gpu0' is not a device name"),
    ],
)
def test_bad_input_is_a_one_line_error(outputs, tmp_path, args, message):
    args = [str(outputs) if a == "BAD" else str(tmp_path / a) if a.endswith(".jsonl") else a for a in args]
    result = run(*args, "--out", tmp_path / "scores.jsonl")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert message in line


def test_invalid_outputs_line_is_reported_with_its_line_number(tmp_path):
    path = tmp_path / "outputs.jsonl"
    good = output_record("q1", "p?", "r.", "default", "o.")
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "q2", "output": 3}) + "\n")
    result = run(path, "--out", tmp_path / "scores.jsonl")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{path}:2: field 'output': expected a string" in result.output


def test_an_out_path_that_cannot_be_made_fails_before_the_scorer_loads(outputs, tmp_path):
    (tmp_path / "afile").write_text("")
    # a scorer that cannot load: were it loaded first, its error would be the one shown
    result = run(outputs, "--out", tmp_path / "afile" / "scores.jsonl", "--scorer", "/no/such/model/dir")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "afile" in result.output and "cannot load scorer" not in result.output


class FailsOnLongTargets:
    """Scores every pair -1, and refuses (like a too-small max_length) a target marked TOO LONG."""

    name = "stub"

    def score(self, contexts, targets, *, template, prefix):
        from gptscore_eval.scorer import TargetScore

        if any("TOO LONG" in t for t in targets):
            raise ValueError("pair 0: target of 61 tokens does not fit in max_length=48")
        return [TargetScore(-1.0, -2.0, 2, False) for _ in targets]


def test_an_output_that_cannot_be_scored_is_named_and_the_others_are_kept(tmp_path):
    path = tmp_path / "outputs.jsonl"
    rows = [output_record(q, p, r, "default", "TOO LONG" if q == "q2" else "fine.") for q, p, r in QA]
    records.write_records(path, "outputs", rows)
    out = tmp_path / "scores.jsonl"
    with pytest.raises(ValueError, match=r"outputs.jsonl: output id='q2' strategy='default': pair 0: target of 61"):
        score_outputs(path, out, scorer=FailsOnLongTargets(), progress=False)
    assert [r["id"] for r in records.read_records(out, "scores").records] == ["q1"]  # scored before it: kept


@pytest.mark.parametrize("option,value,message", [("--aspects", "plain,consistency,plain", "aspects: listed twice"),
                                                  ("--directions", "ref_hyp,ref_hyp", "directions: listed twice")])
def test_a_repeated_aspect_or_direction_is_refused_before_anything_is_written(outputs, tmp_path, option, value,
                                                                              message):
    out = tmp_path / "scores.jsonl"
    result = run(outputs, "--out", out, option, value, "--device", "cpu")
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_resume_refuses_settings_that_change_records_but_not_keys(outputs, tmp_path, smol):
    """A rerun with another direction set (or multi_ref, template...) would skip every record as done
    and leave the new direction unscored: refused, file untouched."""
    out = tmp_path / "scores.jsonl"
    score_outputs(outputs, out, scorer=smol, directions=("ref_hyp",), progress=False)
    before = out.read_bytes()
    with pytest.raises(ValueError, match=r"directions=\['ref_hyp'\], not \['ref_hyp', 'hyp_ref'\]"):
        score_outputs(outputs, out, scorer=smol, directions=("ref_hyp", "hyp_ref"), progress=False)
    with pytest.raises(ValueError, match="multi_ref='mean', not 'max'"):
        score_outputs(outputs, out, scorer=smol, directions=("ref_hyp",), multi_ref="max", progress=False)
    assert out.read_bytes() == before
    again = score_outputs(outputs, out, scorer=smol, directions=("ref_hyp",), progress=False)
    assert again["written"] == 0 and out.read_bytes() == before


def test_without_out_the_scores_go_beside_the_outputs(tmp_path, default_scorer_installed):
    from gptscore_eval.cli import default_scores_path
    assert str(default_scores_path("runs/x/outputs.jsonl")).endswith("x/scores.jsonl")
    assert str(default_scores_path("a/greedy-outputs.jsonl")).endswith("a/greedy-scores.jsonl")
    assert str(default_scores_path("a/run.jsonl")).endswith("a/run.scores.jsonl")
    path = tmp_path / "run.jsonl"
    records.write_records(path, "outputs", [output_record(*QA[0], "default", ANSWERS["default"][0])])
    result = run(path, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert len(records.read_records(tmp_path / "run.scores.jsonl", "scores").records) == 1


def test_resume_check_reads_merged_ranks_and_only_the_records_it_would_skip(outputs, tmp_path, smol):
    """A file merged from torchrun shards names each rank's settings inside the merge's meta line;
    records of an aspect this run does not score are not skipped, so their settings do not bind."""
    out = tmp_path / "scores.jsonl"
    score_outputs(outputs, out, scorer=smol, directions=("ref_hyp",), progress=False)
    lines = out.read_text().splitlines()
    merged = {"_meta": {"run_id": "merge0", "settings": {}, "merged_from": [json.loads(lines[0])["_meta"]]}}
    out.write_text("\n".join([json.dumps(merged), *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"directions=\['ref_hyp'\], not \['ref_hyp', 'hyp_ref'\]"):
        score_outputs(outputs, out, scorer=smol, directions=("ref_hyp", "hyp_ref"), progress=False)
    other = score_outputs(outputs, out, scorer=smol, aspects=("consistency",), directions=("ref_hyp", "hyp_ref"),
                          progress=False)
    assert other["written"] == 5
