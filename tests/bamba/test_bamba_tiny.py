"""The shipped model data/models/bamba-tiny: loads with ours and with transformers, the same
greedy text from every exact strategy (Triton kernels, under the interpreter without a GPU),
chunk-local `independent` differs once a prompt is longer than a chunk; size within budget."""
import importlib.util
from pathlib import Path

import pytest
import torch

import bamba  # before transformers: the Triton interpreter must be chosen before triton is imported
from bamba.generation import encode_prompt
from gptscore_eval.generate import EMBEDDED, load_model

transformers = pytest.importorskip("transformers")

PATH = EMBEDDED["bamba-tiny"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHORT = "What is the capital of France?"  # 37 tokens in the chat format: one 64-token chunk
LONG = ("Read the notes and answer the question. The lighthouse keeper climbed ninety-two steps every evening, "
        "trimmed the wick, polished the lens and wrote the weather in her logbook. One winter night a fishing "
        "boat lost its way in the fog, and the keeper rang the bell for hours until the crew found the harbour. "
        "In spring the town gave her a silver medal, which she kept in a drawer beside the logbook and never wore. "
        "Question: what did the keeper write in her logbook every evening, and why did the town thank her?")


def test_size_and_files():
    files = {p.name: p.stat().st_size for p in PATH.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(files)
    assert sum(files.values()) <= 40e6


def test_loads_with_ours_and_with_transformers():
    ours, tok = load_model("bamba-tiny", strategy="reference", dtype="float32", device=DEVICE)
    hf = transformers.BambaForCausalLM.from_pretrained(PATH, dtype=torch.float32).to(DEVICE).eval()
    ids = torch.tensor([encode_prompt(tok, LONG)], device=DEVICE)
    assert ids.shape[1] > 2 * ours.chunk_size
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


def greedy(model, tok, prompt, n, **kw):
    (g,) = bamba.generate(model, tok, [prompt], max_new_tokens=n, stop_at_eos=False, **kw)
    return g.token_ids


def test_exact_strategies_write_the_same_text():
    model, tok = load_model("bamba-tiny", strategy="reference", dtype="float32", device=DEVICE)
    expected = greedy(model, tok, SHORT, 4)
    assert tok.decode(expected).strip()  # words, not an empty string
    for strategy in ("default", "optimized"):
        model.set_strategy(strategy, backend="triton")
        assert greedy(model, tok, SHORT, 4) == expected, strategy


def test_independent_differs_past_the_first_chunk():
    model, tok = load_model("bamba-tiny", strategy="independent", dtype="float32", device=DEVICE)
    ids = torch.tensor([encode_prompt(tok, LONG)], device=DEVICE)
    with torch.no_grad():
        chunk_local = model(ids)
        exact = model.set_strategy("reference")(ids)
    q = model.chunk_size
    torch.testing.assert_close(chunk_local[:, :q], exact[:, :q], rtol=1e-4, atol=1e-4)
    assert (chunk_local[:, q:] - exact[:, q:]).abs().max() > 0.1


def test_distillation_targets_are_the_answer_tokens():
    """The training loss looks exactly at the positions that predict the teacher's answer."""
    spec = importlib.util.spec_from_file_location("distill", Path(PATH).parent / "distill.py")
    distill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(distill)
    examples = [([5, 6, 7, 8, 9], 3), ([5, 6, 7], 2)]  # (prompt + answer, where the answer starts)
    ids, targets = distill.batch_tensors(examples, pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]]
    predicted = ids[:, 1:][targets[:, :-1]]
    assert predicted.tolist() == [8, 9, 7]
