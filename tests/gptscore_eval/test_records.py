import json
from pathlib import Path

import pytest

from gptscore_eval.records import RecordError, RecordWriter, read_records, write_records

DATA = Path(__file__).resolve().parents[2] / "data"


def prompt(i, **kw):
    return {"id": f"p{i}", "prompt": f"question {i}?", "reference": f"answer {i}.", "token_len": 5, "num_chunks": 1, **kw}


def output(i, strategy="default", **kw):
    return {
        "id": f"p{i}", "strategy": strategy, "chunk_size": 64, "model": "tiny-random",
        "prompt": f"question {i}?", "reference": [f"answer {i}.", "another answer."], "output": f"out {i}",
        "prompt_tokens": 5, "output_tokens": 3, "num_chunks": 1,
        "generation": {"max_new_tokens": 3, "do_sample": False, "seed": 0},
        "timings": {"prefill_s": 0.01, "decode_s": [0.001, 0.002], "total_s": 0.013, "tokens_per_s": 230.0},
        "peak_memory_bytes": None, "device": "cpu", **kw,
    }


def score(i, strategy="default", aspect="quality", **kw):
    direction = {"mean": -1.5, "sum": -4.5, "count": 3, "truncated": False}
    return {
        "id": f"p{i}", "strategy": strategy, "scorer": "smollm2-135m-instruct", "aspect": aspect,
        "template": "{context} In other words , {target}", "ref_hyp": direction,
        "hyp_ref": {**direction, "mean": -2.0}, "avg_f": -1.75, "prob_hm_f": -1.8, "legacy_harm_f": -0.857,
        "num_chunks": 1, **kw,
    }


@pytest.mark.parametrize("kind,make", [("prompts", prompt), ("outputs", output), ("scores", score)])
def test_round_trip_every_kind(tmp_path, kind, make):
    path = tmp_path / f"{kind}.jsonl"
    originals = [make(i) for i in range(5)]
    write_records(path, kind, originals)
    f = read_records(path)  # kind detected from the fields
    assert f.kind.name == kind
    assert f.records == originals

    appended = tmp_path / f"appended-{kind}.jsonl"
    with RecordWriter(appended, kind) as w:
        for r in originals:
            w.write(r)
    f = read_records(appended, kind)
    assert [{k: v for k, v in r.items() if k != "run_id"} for r in f.records] == originals
    assert len(f.meta) == 1 and all(r["run_id"] == f.meta[0]["run_id"] for r in f.records)
    assert {"versions", "device", "settings", "created"} <= set(f.meta[0])


def write_lines(path, lines, end="\n"):
    path.write_bytes(end.join(lines).encode("utf-8") + end.encode() if lines else b"")


def message(path, kind=None):
    with pytest.raises(RecordError) as err:
        read_records(path, kind)
    return str(err.value)


@pytest.mark.parametrize(
    "bad_line,expected",
    [
        ('{"id": "p1", "prompt": "q"', "invalid JSON"),
        ('[1, 2]', "expected a JSON object"),
        ('{"prompt": "q?", "reference": "a"}', "field 'id': missing"),
        ('{"id": 7, "prompt": "q?", "reference": "a"}', "field 'id': expected a string, got a number"),
        ('{"id": "p1", "prompt": "   ", "reference": "a"}', "field 'prompt': must not be empty or invisible"),
        ('{"id": "p1", "prompt": "q", "reference": "\\u200b"}', "field 'reference': must not be empty or invisible"),
        ('{"id": "p1", "prompt": "q", "reference": []}', "field 'reference': expected a non-empty list"),
        ('{"id": "p1", "prompt": "q", "reference": "a", "token_len": "5"}', "field 'token_len': expected an integer"),
        ('{"id": "p1", "prompt": "q", "reference": "a", "num_chunks": 0}', "field 'num_chunks': must be >= 1"),
        ('{"id": "p1", "prompt": "q", "reference": "a", "token_len": true}', "field 'token_len': expected an integer"),
    ],
)
def test_bad_prompt_lines_name_file_line_and_field(tmp_path, bad_line, expected):
    path = tmp_path / "prompts.jsonl"
    write_lines(path, [json.dumps(prompt(0)), bad_line, json.dumps(prompt(2))])
    msg = message(path, "prompts")
    assert msg.startswith(f"{path}:2: ")
    assert expected in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"timings": {"prefill_s": 0.1, "total_s": 0.2}}, "field 'timings': missing 'tokens_per_s'"),
        ({"timings": {"prefill_s": -1, "total_s": 0.2, "tokens_per_s": 1}}, "'prefill_s' must be >= 0"),
        ({"timings": {"prefill_s": 0.1, "total_s": 0.2, "tokens_per_s": 1, "decode_s": ["x"]}}, "'decode_s' must be a list"),
        ({"output_tokens": -1}, "field 'output_tokens': must be >= 0"),
        ({"chunk_size": 1.5}, "field 'chunk_size': expected an integer"),
        ({"strategy": ""}, "field 'strategy': must not be empty"),
        ({"generation": []}, "field 'generation': expected an object"),
        ({"finish_reason": 5}, "field 'finish_reason': expected one of 'eos', 'length', got 5"),
        ({"finish_reason": "stop"}, "field 'finish_reason': expected one of 'eos', 'length', got 'stop'"),
    ],
)
def test_bad_output_fields(tmp_path, change, expected):
    path = tmp_path / "outputs.jsonl"
    write_lines(path, [json.dumps(output(0)), json.dumps(output(1, **change))])
    msg = message(path)
    assert msg.startswith(f"{path}:2: ") and expected in msg


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"ref_hyp": {"mean": -1.0, "sum": -2.0}}, "field 'ref_hyp': missing 'count'"),
        ({"ref_hyp": {"mean": -1.0, "sum": -2.0, "count": 0}}, "'count' must be >= 1"),
        ({"avg_f": "high"}, "field 'avg_f': expected a number"),
        ({"scorer": ""}, "field 'scorer': must not be empty"),
    ],
)
def test_bad_score_fields(tmp_path, change, expected):
    path = tmp_path / "scores.jsonl"
    write_lines(path, [json.dumps(score(0, **change))])
    assert expected in message(path)


def test_non_finite_numbers_are_rejected(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text(json.dumps(score(0)).replace('"avg_f": -1.75', '"avg_f": NaN') + "\n")
    assert "field 'avg_f': must be finite" in message(path)


def test_duplicate_key_names_both_lines(tmp_path):
    path = tmp_path / "outputs.jsonl"
    write_lines(path, [json.dumps(output(0)), json.dumps(output(1)), json.dumps(output(0))])
    msg = message(path)
    assert msg.startswith(f"{path}:3: field 'id': duplicate key")
    assert "first on line 1" in msg
    # Same id under another strategy is a different key.
    write_lines(path, [json.dumps(output(0)), json.dumps(output(0, strategy="independent"))])
    assert len(read_records(path).records) == 2


def test_truncated_last_line_is_reported(tmp_path):
    path = tmp_path / "outputs.jsonl"
    whole = json.dumps(output(1))
    path.write_text(json.dumps(output(0)) + "\n" + whole[: len(whole) // 2])
    assert message(path).startswith(f"{path}:2: truncated last line")


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(json.dumps(prompt(0)).encode() + b"\n" + b'{"id": "p\xff"}\n')
    assert message(path) == f"{path}:2: not valid UTF-8 (byte 0xff at column 10)"


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert message(empty) == f"{empty}: empty file: no records"
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    assert "empty file" in message(blank)
    assert message(tmp_path / "nope.jsonl").endswith("no such file")


def test_writer_skips_present_keys_and_rerun_adds_nothing(tmp_path):
    path = tmp_path / "outputs.jsonl"
    todo = [output(i, s) for i in range(4) for s in ("default", "independent")]
    with RecordWriter(path, "outputs") as w:
        for r in w.pending(todo)[:3]:
            w.write(r)
    before = path.read_bytes()
    with RecordWriter(path, "outputs") as w:
        pending = w.pending(todo)
        assert [(r["id"], r["strategy"]) for r in pending] == [(r["id"], r["strategy"]) for r in todo[3:]]
        for r in pending:
            w.write(r)
        with pytest.raises(ValueError, match="already written"):
            w.write(todo[0])
    assert path.read_bytes().startswith(before)  # nothing rewritten
    with RecordWriter(path, "outputs") as w:
        assert w.pending(todo) == []
    f = read_records(path)
    assert sorted((r["id"], r["strategy"]) for r in f.records) == sorted((r["id"], r["strategy"]) for r in todo)
    assert len(f.meta) == 2  # one per run that wrote something


def test_resume_after_crash_mid_write(tmp_path):
    path = tmp_path / "scores.jsonl"
    todo = [score(i, aspect=a) for i in range(3) for a in ("quality", "fluency")]
    with RecordWriter(path, "scores") as w:
        for r in todo[:4]:
            w.write(r)
    # Simulate a crash half-way through writing the fifth line.
    partial = json.dumps({**todo[4], "run_id": "dead"})[:37]
    with open(path, "a") as f:
        f.write(partial)
    complete = path.read_bytes()[: -len(partial)]

    with RecordWriter(path, "scores") as w:
        assert w.repaired_bytes == len(partial)
        assert path.read_bytes() == complete  # the fragment was cut, every whole line kept
        pending = w.pending(todo)
        assert [(r["id"], r["aspect"]) for r in pending] == [(r["id"], r["aspect"]) for r in todo[4:]]
        for r in pending:
            w.write(r)
    assert (tmp_path / "scores.jsonl.partial").read_text() == partial + "\n"  # kept aside, not lost
    keys = [(r["id"], r["aspect"]) for r in read_records(path).records]
    assert keys == [(r["id"], r["aspect"]) for r in todo]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps(prompt(0)) + "\n" + json.dumps(prompt(1)))
    with RecordWriter(path, "prompts") as w:
        assert w.repaired_bytes == 0
        w.write(prompt(2))
    assert [r["id"] for r in read_records(path).records] == ["p0", "p1", "p2"]


def test_writer_refuses_to_append_to_an_invalid_file(tmp_path):
    path = tmp_path / "outputs.jsonl"
    write_lines(path, [json.dumps(output(0)), "not json", json.dumps(output(1))])
    before = path.read_bytes()
    with pytest.raises(RecordError, match=":2: invalid JSON"):
        RecordWriter(path, "outputs")
    assert path.read_bytes() == before


def test_writer_validates_before_writing(tmp_path):
    path = tmp_path / "outputs.jsonl"
    with RecordWriter(path, "outputs") as w:
        with pytest.raises(RecordError, match="field 'output'"):
            w.write(output(0, output=None))
    assert not path.exists() or read_records(path, allow_empty=True).records == []


def test_shipped_prompt_sets_are_valid():
    sets = {p.name: read_records(p, "prompts") for p in DATA.glob("*.jsonl")}
    assert {"qa_256.jsonl", "qa_512.jsonl", "qa_long.jsonl", "demo.jsonl"} <= set(sets)
    demo = sets["demo.jsonl"].records
    assert 8 <= len(demo) <= 12 and sum(r["num_chunks"] > 2 for r in demo) >= 2
    assert len(sets["qa_256.jsonl"].records) == 100 and len(sets["qa_512.jsonl"].records) == 99


def test_seed_conversion_drops_duplicates_and_invisible_references():
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_seed", DATA / "convert_seed.py")
    convert_seed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert_seed)
    item = {"prompt": "q", "answer": "a", "token_len": 3, "num_chunks": 1}
    kept, dropped = convert_seed.convert(
        [item, dict(item), {**item, "prompt": "r", "answer": "\u200b \n"}, {**item, "prompt": "s"}], "t"
    )
    assert [r["prompt"] for r in kept] == ["q", "s"]
    assert len(dropped) == 2 and "duplicate" in dropped[0] and "invisible" in dropped[1]
    assert kept[0]["id"] == convert_seed.convert([item], "t")[0][0]["id"]  # stable


@pytest.mark.parametrize("line,message", [
    ('{"id": "p1", "prompt": "what is x\\ud800?", "reference": "r."}', "field 'prompt': not valid Unicode text"),
    ("[" * 100_000 + "]" * 100_000, "invalid JSON: nested too deeply"),
    ('{"id": "p1", "prompt": "q?", "reference": "r.", "n": ' + "9" * 5000 + "}", "invalid JSON: Exceeds the limit"),
])
def test_json_that_python_parses_badly_is_a_record_error(tmp_path, line, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps(prompt(0)) + "\n" + line + "\n")
    with pytest.raises(RecordError, match=f"prompts.jsonl:2: {message}"):
        read_records(path, "prompts")


def test_a_second_writer_on_the_same_file_fails_at_once(tmp_path):
    path = tmp_path / "sub" / "outputs.jsonl"  # the directory is made when the writer opens
    with RecordWriter(path, "outputs") as first:
        assert path.parent.is_dir()
        with pytest.raises(RecordError, match="another run is writing this file"):
            RecordWriter(path, "outputs")
        first.write(output(0))
    with RecordWriter(path, "outputs") as again:  # released on close
        assert len(again) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["outputs.jsonl"]  # no lock file left


def test_a_writer_that_fails_to_open_releases_its_lock(tmp_path):
    path = tmp_path / "outputs.jsonl"
    path.write_text("not json\n")
    with pytest.raises(RecordError, match=":1: invalid JSON"):
        RecordWriter(path, "outputs")
    path.write_text("")
    RecordWriter(path, "outputs").close()


@pytest.mark.parametrize("make,drop,expected", [
    (score, ("scorer",), "field 'scorer': missing"),
    (output, ("strategy", "output"), "field 'strategy': missing"),
    (output, ("output",), "field 'output': missing"),
])
def test_a_file_of_unknown_kind_is_told_by_the_fields_only_its_kind_has(tmp_path, make, drop, expected):
    """validate guesses the kind from the first record; one missing a field still reads as its kind,
    so the error names that field (not another kind's) and the file is not taken for a prompt set."""
    first = {k: v for k, v in make(0).items() if k not in drop}
    path = tmp_path / "file.jsonl"
    write_lines(path, [json.dumps(first), json.dumps(make(1))])
    msg = message(path)
    assert msg.startswith(f"{path}:1: ") and expected in msg
