"""bamba.generate on the offline tiny-random model: batching, sampling, EOS, timings, errors.

The model lives on DEVICE (the GPU when there is one, else the CPU), so generate's own tensors,
generators, timers and memory counter are exercised on that device."""
import pytest
import torch

import bamba  # before transformers: the Triton interpreter must be chosen before triton is imported
from bamba.tiny import tiny_model as _tiny_model, tiny_tokenizer

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def tiny_model(**kwargs):
    return _tiny_model(device=DEVICE, **kwargs)



PROMPTS = [  # 12, 45 and 30 tokens: with chunk 16, decoding crosses a chunk boundary in every row
    "Short one.",
    "A longer prompt that spans a few chunks of 16 tokens.",
    "Medium-sized prompt text here",
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model(strategy="reference", chunk_size=16)


def texts(gens):
    return [g.token_ids for g in gens]


def test_tiny_random_is_deterministic_and_offline(tok):
    a, b = tiny_model(strategy="reference"), tiny_model(strategy="reference")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.name_or_path == "tiny-random" and a.chunk_size == 64 and a.device.type == DEVICE
    ids = tok("héllo")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 1 + len("héllo".encode())
    assert tok.decode(ids, skip_special_tokens=True) == "héllo"


@pytest.mark.parametrize("use_cache", [True, False])
def test_batch_of_three_equals_batch_of_one(model, tok, use_cache):
    one = bamba.generate(model, tok, PROMPTS, max_new_tokens=12, use_cache=use_cache, stop_at_eos=False)
    three = bamba.generate(model, tok, PROMPTS, max_new_tokens=12, use_cache=use_cache, stop_at_eos=False,
                           batch_size=3)
    assert texts(one) == texts(three)
    assert [g.prompt_tokens for g in three] == [len(tok(p)["input_ids"]) for p in PROMPTS]


def test_batch_equals_batch_of_one_independent(tok):
    """Chunk-local decoding resets each row's state at its own chunk boundaries (real tokens only)."""
    model = tiny_model(strategy="independent", chunk_size=16, num_layers=1)  # one Mamba2 layer: interpreter time
    one = bamba.generate(model, tok, PROMPTS, max_new_tokens=5, stop_at_eos=False)
    three = bamba.generate(model, tok, PROMPTS, max_new_tokens=5, stop_at_eos=False, batch_size=3)
    assert texts(one) == texts(three)


def test_greedy_cache_equals_no_cache(model, tok):
    assert texts(bamba.generate(model, tok, PROMPTS[:2], max_new_tokens=15, stop_at_eos=False)) == texts(
        bamba.generate(model, tok, PROMPTS[:2], max_new_tokens=15, stop_at_eos=False, use_cache=False))


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("strategy", ["default", "independent"])
def test_cuda_graph_decode_equals_eager(tok, strategy):
    """Replayed steps write the cache at the device-side slot, mask unwritten keys and reset
    `independent`'s state at each row's chunk boundary, exactly as eager steps do."""
    model = tiny_model(strategy=strategy, chunk_size=16)
    kw = dict(max_new_tokens=20, stop_at_eos=False, batch_size=3)
    assert texts(bamba.generate(model, tok, PROMPTS, cuda_graph=True, **kw)) == \
        texts(bamba.generate(model, tok, PROMPTS, cuda_graph=False, **kw))


@pytest.mark.skipif(DEVICE != "cuda" or torch.cuda.get_device_capability()[0] < 9,
                    reason="programmatic dependent launch needs a Hopper or newer GPU")
def test_dependent_launch_changes_no_bit(tok, monkeypatch):
    """Steps whose kernels start while the kernel ahead finishes (PDL; the one-row projections read
    their first weight block before waiting for it) give the logits of plainly launched steps,
    replayed from a CUDA graph too."""
    from bamba.generation import GraphedDecoder
    from bamba.kernels import ssd_common

    model = tiny_model(strategy="default", chunk_size=16)
    ids = torch.tensor([tok(PROMPTS[1])["input_ids"]], device=DEVICE)

    def logits(pdl):
        monkeypatch.setattr(ssd_common, "PDL", pdl)
        cache = model.new_cache(1, ids.shape[1] + 12)
        with torch.inference_mode():
            out = [model(ids, cache=cache, logits_to_keep=1)]
            decode = GraphedDecoder(model, cache)
            for _ in range(12):
                out.append(decode(out[-1][:, -1].argmax(-1, keepdim=True)).clone())
        return torch.cat(out, 1)

    assert torch.equal(logits(True), logits(False))


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "biased_projections"])
def test_deferred_norms_give_the_logits_of_launched_norms(tok, monkeypatch, one_launch_on_cpu, bias):
    """A batch-1 decode step leaves its norms (and residual adds) to the projections that read them
    and runs SwiGLU in one launch; its logits are those of norms launched on their own, within fp32
    rounding (only the order of the sums of squares differs). On the CPU the one-launch forms run
    under the interpreter."""
    import dataclasses

    import bamba.modeling_bamba as m
    from bamba.tiny import tiny_config

    config = dataclasses.replace(tiny_config().truncated(3), attention_bias=bias, mlp_bias=bias, mamba_proj_bias=bias)
    model = m.BambaForCausalLM.from_config(config, strategy="default", chunk_size=16, device=DEVICE, seed=1)
    model.set_strategy("default", 16, backend="triton")
    ids = torch.tensor([tok(PROMPTS[0])["input_ids"]], device=DEVICE)
    deferred = []

    class CountedRow(m.NormedRow):
        def __init__(self, *args, **kwargs):
            deferred.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(m, "NormedRow", CountedRow)
    real_deferred = m._deferred

    def logits(defer):
        monkeypatch.setattr(m, "_deferred", real_deferred if defer else lambda *a: False)
        cache = model.new_cache(1, ids.shape[1] + 3)
        with torch.inference_mode():
            out = [model(ids, cache=cache, logits_to_keep=1)]
            for _ in range(3):
                out.append(model(out[-1][:, -1].argmax(-1, keepdim=True), cache=cache))
        return torch.cat(out, 1)

    want = logits(False)
    assert not deferred
    got = logits(True)
    assert len(deferred) == 3 * (2 * 3 + 2 + 1)  # per step: 2 per layer, a gated one per Mamba layer, the final one
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy", ["default", "independent"])
def test_decode_step_reads_no_host_state(tok, strategy):
    """What a CUDA graph replays: kernels, not Python. So `decode_step` must take the write slot,
    positions and chunk resets from device tensors: steps on a cache whose host-side `length` is
    never advanced give the logits of `forward`'s steps (rows cross chunk boundaries, padded)."""
    model = tiny_model(strategy=strategy, chunk_size=16)
    enc = [tok(p)["input_ids"] for p in PROMPTS]
    width = max(map(len, enc))
    ids = torch.tensor([[0] * (width - len(e)) + e for e in enc], device=DEVICE)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=DEVICE)
    caches = [model.new_cache(len(enc), width + 6) for _ in range(2)]
    logits = [model(ids, mask, cache, logits_to_keep=1) for cache in caches]
    stale = caches[1].length
    for _ in range(6):
        token = logits[0][:, -1].argmax(-1, keepdim=True)
        logits = [model(token, cache=caches[0]), model.decode_step(token, caches[1])]
        torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=0)
    assert caches[1].length == stale and int(caches[1].slot) == caches[0].length == width + 6


def test_sampling_is_seeded(model, tok):
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.5, top_k=100, top_p=0.95, stop_at_eos=False)
    a = bamba.generate(model, tok, PROMPTS, seed=1, **kw)
    assert texts(a) == texts(bamba.generate(model, tok, PROMPTS, seed=1, **kw))
    assert texts(a) == texts(bamba.generate(model, tok, PROMPTS, seed=1, batch_size=2, **kw))
    assert texts(a) != texts(bamba.generate(model, tok, PROMPTS, seed=2, **kw))
    # prompt i draws from its own generator seeded seed + i, as it would alone
    assert texts(a) == texts([bamba.generate(model, tok, [p], seed=1 + i, **kw)[0] for i, p in enumerate(PROMPTS)])
    assert texts(a) != texts(bamba.generate(model, tok, PROMPTS, max_new_tokens=10, stop_at_eos=False))
    # top_k=1 is greedy
    greedy = bamba.generate(model, tok, PROMPTS, max_new_tokens=5, stop_at_eos=False)
    assert texts(greedy) == texts(bamba.generate(model, tok, PROMPTS, max_new_tokens=5, do_sample=True, top_k=1,
                                                 stop_at_eos=False))
    # so is a temperature so small that logits / temperature overflows fp32
    assert texts(greedy) == texts(bamba.generate(model, tok, PROMPTS, max_new_tokens=5, do_sample=True,
                                                 temperature=1e-39, stop_at_eos=False))


def test_top_p_keeps_the_token_that_crosses_it():
    from bamba.generation import _sampler

    # probabilities 0.4, 0.35, 0.25: the smallest set reaching 0.5 is the first two tokens
    logits = torch.tensor([0.4, 0.35, 0.25]).log().expand(400, 3)
    generator = torch.Generator().manual_seed(0)
    drawn = _sampler(True, 1.0, None, 0.5, [generator] * 400)(logits)
    assert set(drawn.tolist()) == {0, 1}
    assert 0.45 < (drawn == 0).float().mean().item() < 0.62  # 0.4 / 0.75 = 0.53 after renormalizing


def test_stops_at_eos(model, tok):
    (free,) = bamba.generate(model, tok, PROMPTS[:1], max_new_tokens=6, stop_at_eos=False)
    assert free.finish_reason == "length" and free.output_tokens == 6
    # The first greedy token after the first that did not occur before it now ends the text (a
    # repeated token would end it earlier).
    k = next(i for i in range(1, 6) if free.token_ids[i] not in free.token_ids[:i])
    eos_model = tiny_model(strategy="reference", chunk_size=16)
    eos_model.config.eos_token_id = free.token_ids[k]
    (stopped,) = bamba.generate(eos_model, tok, PROMPTS[:1], max_new_tokens=6)
    assert stopped.finish_reason == "eos" and stopped.token_ids == free.token_ids[:k]
    # in a batch, a row that stops early is timed up to its own last token
    batch = bamba.generate(eos_model, tok, PROMPTS, max_new_tokens=6, batch_size=3)
    assert batch[0].output_tokens == k and max(g.output_tokens for g in batch) > k
    for g in batch:
        assert g.total_s == pytest.approx(g.prefill_s + sum(g.decode_s))
    assert len(stopped.decode_s) == k  # tokens 2..k+1 (the EOS) came from decode steps


def test_timings(model, tok):
    (g,) = bamba.generate(model, tok, PROMPTS[1:2], max_new_tokens=5, stop_at_eos=False)
    assert g.prefill_s > 0 and len(g.decode_s) == 4 and all(s > 0 for s in g.decode_s)
    assert g.total_s == pytest.approx(g.prefill_s + sum(g.decode_s))
    assert g.tokens_per_s == pytest.approx(5 / g.total_s)
    if DEVICE == "cuda":  # torch.cuda.max_memory_allocated since the request began: the weights at least
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        assert isinstance(g.peak_memory_bytes, int) and g.peak_memory_bytes >= weights > 0
    else:
        assert g.peak_memory_bytes is None  # CPU: no device memory counter
    assert set(g.timings()) == {"prefill_s", "decode_s", "total_s", "tokens_per_s"}
    assert g.text == tok.decode(g.token_ids, skip_special_tokens=True)


@pytest.mark.skipif(DEVICE != "cuda", reason="peak device memory is measured on CUDA only")
def test_peak_memory_is_per_request(model, tok):
    """The peak counter restarts with every batch: a small request after a big one reports its own peak."""
    (big, *_) = bamba.generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=3, stop_at_eos=False)
    (small,) = bamba.generate(model, tok, PROMPTS[:1], max_new_tokens=2, stop_at_eos=False)
    assert 0 < small.peak_memory_bytes < big.peak_memory_bytes


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=2, batch_size=0), "batch_size"),
    (dict(max_new_tokens=2, temperature=0.0), "temperature"),
    (dict(max_new_tokens=2, top_p=1.5), "top_p"),
    (dict(max_new_tokens=2, top_k=0), "top_k"),
    (dict(max_new_tokens=2, seed=[1, 2]), "one seed per prompt"),
    (dict(max_new_tokens=2, use_cache=False, cuda_graph=True), "cuda_graph"),
])
def test_bad_settings(model, tok, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bamba.generate(model, tok, PROMPTS, **kwargs)


def test_prompts_must_be_a_list(model, tok):
    with pytest.raises(ValueError, match="list of strings"):
        bamba.generate(model, tok, "one prompt", max_new_tokens=2)
