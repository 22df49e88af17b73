"""`gptscore generate` / generate_outputs on the offline tiny-random model and a local checkpoint."""
import json

import pytest
import torch
from click.testing import CliRunner

from gptscore_eval import records
from gptscore_eval.cli import main
from gptscore_eval.generate import generate_outputs

PROMPTS = [
    {"id": "capital", "prompt": "What is the capital of France?", "reference": "Paris."},
    {"id": "boil", "prompt": "At what temperature does water boil at sea level, in Celsius?",
     "reference": ["100 degrees Celsius.", "At 100 °C."]},
    {"id": "hi", "prompt": "Hi", "reference": "Hello."},
]
# reference strategy only here: these tests are about the records, not the kernels
BASE = ["generate", "--model", "tiny-random", "--strategies", "reference", "--max-new-tokens", "4"]


def device_name():
    """What records say with no --device: the GPU when there is one (cuda:0, named), else the CPU."""
    return f"cuda:0 ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "prompts.jsonl"
    records.write_records(path, "prompts", PROMPTS)
    return path


def run(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    return result


def test_generate_writes_valid_records_and_resumes(tmp_path, data):
    out = tmp_path / "outputs.jsonl"
    result = run(*BASE, "--data", data, "--out", out, "--chunk-size", "16", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert "wrote 2 records, skipped 0" in result.output
    f = records.read_records(out, "outputs")
    assert [r["id"] for r in f.records] == ["capital", "boil"]
    r = f.records[1]
    assert r["strategy"] == "reference" and r["chunk_size"] == 16 and r["model"] == "tiny-random"
    assert r["reference"] == PROMPTS[1]["reference"] and r["device"] == device_name()
    if torch.cuda.is_available():  # torch.cuda.max_memory_allocated during the request
        assert isinstance(r["peak_memory_bytes"], int) and r["peak_memory_bytes"] > 0
    else:
        assert r["peak_memory_bytes"] is None
    assert r["prompt_tokens"] == 1 + len(PROMPTS[1]["prompt"].encode())
    assert r["num_chunks"] == -(-r["prompt_tokens"] // 16)
    assert r["output_tokens"] <= 4 and len(r["timings"]["decode_s"]) == r["output_tokens"] - 1
    assert r["generation"]["max_new_tokens"] == 4 and r["generation"]["use_cache"] is True
    assert r["generation"]["num_layers"] == 4 and r["run_id"] == f.meta[0]["run_id"]
    assert f.meta[0]["settings"]["strategies"] == ["reference"] and f.meta[0]["settings"]["limit"] == 2

    # Rerun without --limit: only the missing prompt is generated; the earlier lines are kept as they are.
    before = out.read_bytes()
    result = run(*BASE, "--data", data, "--out", out, "--chunk-size", "16")
    assert "wrote 1 records, skipped 2" in result.output
    assert out.read_bytes().startswith(before)
    assert len(records.read_records(out, "outputs").records) == 3
    # Nothing left to do: the file is untouched and the model is not even loaded.
    before = out.read_bytes()
    assert "wrote 0 records, skipped 3" in run(*BASE, "--data", data, "--out", out).output
    assert out.read_bytes() == before


def test_resume_refuses_other_settings(tmp_path, data):
    out = tmp_path / "outputs.jsonl"
    generate_outputs("tiny-random", data, out, strategies=["reference"], max_new_tokens=3, limit=1, progress=False)
    before = out.read_bytes()
    with pytest.raises(ValueError, match="max_new_tokens=3, not 5"):
        generate_outputs("tiny-random", data, out, strategies=["reference"], max_new_tokens=5, progress=False)
    result = run(*BASE, "--data", data, "--out", out, "--max-new-tokens", "3", "--sample")
    assert result.exit_code == 1 and "do_sample=False, not True" in result.output
    result = run(*BASE, "--data", data, "--out", out, "--max-new-tokens", "3", "--chunk-size", "16")
    assert result.exit_code == 1 and "chunk_size=64, not 16" in result.output
    result = run(*BASE, "--data", data, "--out", out, "--max-new-tokens", "3", "--seed", "7")
    assert result.exit_code == 1 and "seed=0, not 7" in result.output
    # the kernels or their PyTorch definitions: same strategy, different rounding
    made, other = ("triton", "torch") if torch.cuda.is_available() else ("torch", "triton")
    result = run(*BASE, "--data", data, "--out", out, "--max-new-tokens", "3", "--backend", other)
    assert result.exit_code == 1 and f"backend={made!r}, not {other!r}" in result.output
    assert out.read_bytes() == before


def test_resume_after_a_crash_mid_line(tmp_path, data):
    out = tmp_path / "outputs.jsonl"
    generate_outputs("tiny-random", data, out, strategies=["reference"], max_new_tokens=3, limit=1, progress=False)
    with open(out, "a") as f:
        f.write('{"id": "boil", "strat')  # a crash while writing
    summary = generate_outputs("tiny-random", data, out, strategies="reference", max_new_tokens=3, progress=False)
    assert summary == {"out": str(out), "written": 2, "skipped": 1}
    assert [r["id"] for r in records.read_records(out, "outputs").records] == ["capital", "boil", "hi"]
    assert (tmp_path / "outputs.jsonl.partial").is_file()


def test_batched_no_cache_sampled_run_matches_unbatched(tmp_path, data):
    """Batching and resuming must not change what is generated, sampling included (seed per prompt)."""
    kw = dict(strategies=["reference"], max_new_tokens=4, do_sample=True, seed=3, progress=False)
    generate_outputs("tiny-random", data, tmp_path / "a.jsonl", batch_size=3, use_cache=False, **kw)
    generate_outputs("tiny-random", data, tmp_path / "b.jsonl", limit=1, **kw)
    generate_outputs("tiny-random", data, tmp_path / "b.jsonl", **kw)
    a, b = (records.read_records(tmp_path / n, "outputs").records for n in ("a.jsonl", "b.jsonl"))
    assert [r["output"] for r in a] == [r["output"] for r in b]
    assert a[0]["generation"]["use_cache"] is False and a[0]["generation"]["batch_size"] == 3


def test_local_checkpoint_directory(tmp_path, data):
    """A checkpoint directory with its own tokenizer, as Hugging Face ships them."""
    from bamba.tiny import tiny_model, tiny_tokenizer
    from safetensors.torch import save_file

    model = tiny_model(strategy="reference", num_layers=3, device="cpu")  # a checkpoint file is saved from the CPU
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(model.config.to_dict()))
    save_file(dict(model.state_dict()), ckpt / "model.safetensors")
    tiny_tokenizer().save_pretrained(ckpt)
    out = tmp_path / "outputs.jsonl"
    result = run("generate", "--model", ckpt, "--data", data, "--out", out, "--strategies", "reference",
                 "--max-new-tokens", "3", "--num-layers", "2", "--dtype", "float32")
    assert result.exit_code == 0, result.output
    r = records.read_records(out, "outputs").records[0]
    assert r["model"] == str(ckpt) and r["generation"]["num_layers"] == 2 and r["chunk_size"] == 64
    assert r["device"] == device_name()


@pytest.mark.parametrize("args,message", [
    (["--strategies", "default,fastest"], "strategies: unknown 'fastest'"),
    (["--strategies", "reference,reference"], "listed twice"),
    (["--chunk-size", "24"], "power of two >= 16"),
    (["--model", "no/such-model-anywhere"], "no/such-model-anywhere"),
    (["--model", "./missing-dir"], "no such checkpoint directory"),
    (["--device", "gpu0"], "device: 'gpu0' is not a device name"),
    (["--device", "cuda:99"], "device: 'cuda:99', but"),
])
def test_bad_options_are_one_line_errors(tmp_path, data, args, message):
    result = run(*BASE, "--data", data, "--out", tmp_path / "o.jsonl", *args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_files_are_one_line_errors(tmp_path, data):
    result = run(*BASE, "--data", tmp_path / "none.jsonl", "--out", tmp_path / "o.jsonl")
    assert result.exit_code == 1 and "no such file" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "q"}\n')
    result = run(*BASE, "--data", bad, "--out", tmp_path / "o.jsonl")
    assert result.exit_code == 1 and "field 'reference': missing" in result.output
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text('{"model_type": "llama"}')
    result = run(*BASE, "--model", llama, "--data", data, "--out", tmp_path / "o.jsonl")
    assert result.exit_code == 1 and "model_type is 'llama', expected 'bamba'" in result.output


def test_prompt_longer_than_the_model_limit(tmp_path, data):
    from bamba.tiny import tiny_model, tiny_tokenizer
    from safetensors.torch import save_file

    model = tiny_model(strategy="reference", num_layers=1, device="cpu")
    model.config.max_position_embeddings = 40
    ckpt = tmp_path / "short"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(model.config.to_dict()))
    save_file(dict(model.state_dict()), ckpt / "model.safetensors")
    tiny_tokenizer().save_pretrained(ckpt)
    result = run(*BASE, "--model", ckpt, "--data", data, "--out", tmp_path / "o.jsonl")
    assert result.exit_code == 1, result.output
    assert "prompt 'boil' has 62 tokens" in result.output and "limit of 40 tokens" in result.output


def test_a_finished_file_still_checks_the_settings_given(tmp_path, data):
    """With nothing left to generate the model is not loaded, but explicit settings that differ
    from the file's (or are invalid) are still refused rather than reported as 'skipped'."""
    out = tmp_path / "outputs.jsonl"
    generate_outputs("tiny-random", data, out, strategies=["reference"], max_new_tokens=3, progress=False)
    before = out.read_bytes()
    made = json.loads(before.decode().splitlines()[1])["generation"]
    other_dtype = "bfloat16" if made["dtype"] != "bfloat16" else "float32"
    for extra, message in ((["--chunk-size", "32"], "chunk_size=64, not 32"),
                           (["--chunk-size", "10"], "chunk_size: expected a power of two"),
                           (["--num-layers", "99"], f"num_layers={made['num_layers']}, not 99"),
                           (["--dtype", other_dtype], f"dtype={made['dtype']!r}, not {other_dtype!r}")):
        result = run(*BASE, "--data", data, "--out", out, "--max-new-tokens", "3", *extra)
        assert result.exit_code == 1 and message in result.output, (extra, result.output)
    assert run(*BASE, "--data", data, "--out", out, "--max-new-tokens", "3").exit_code == 0
    assert out.read_bytes() == before
