import json

from click.testing import CliRunner

from gptscore_eval.cli import main


def test_validate_counts_the_shipped_sets(data_files=("data/demo.jsonl", "data/qa_512.jsonl")):
    result = CliRunner().invoke(main, ["validate", *data_files])
    assert result.exit_code == 0, result.output
    assert "data/demo.jsonl: 10 prompts records" in result.output
    assert "data/qa_512.jsonl: 99 prompts records" in result.output
    assert "2: 99" in result.output  # bucket counts by num_chunks


def test_validate_reports_first_bad_line_without_traceback(tmp_path):
    good = {"id": "a", "prompt": "q?", "reference": "r."}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "reference": 3}) + "\n{oops\n")
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {path}:2: field 'reference': expected a string, got a number"
    assert "Traceback" not in result.output


def test_validate_missing_file_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "none.jsonl")])
    assert result.exit_code == 1 and "no such file" in result.output and "Traceback" not in result.output
