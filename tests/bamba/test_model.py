"""Our Bamba against transformers' BambaForCausalLM on tiny random checkpoints (fp32).

Both models run on DEVICE (the GPU when there is one, else the CPU), in IEEE fp32: on a GPU, TF32
is off and transformers runs its own PyTorch path (see `fp32_parity`), so the tolerance stays fp32.
On the CPU the Triton strategies run under the Triton interpreter (a few seconds per forward), so
the models are tiny: hidden 32, Mamba heads 4 x 16, state 16, chunk 16, prompts of 40-70 tokens.
"""
import contextlib
import functools
import inspect
import json
import math

import pytest
import torch

import bamba  # before transformers: the Triton interpreter must be chosen before triton is imported
from bamba import BambaConfig, BambaForCausalLM
from bamba.tiny import tiny_tokenizer

transformers = pytest.importorskip("transformers")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# transformers' Bamba functions that use mamba_ssm / causal_conv1d kernels when those are installed
_HF_KERNEL_FUNCS = ("causal_conv1d_fn", "causal_conv1d_update", "mamba2_chunk_scan",
                    "mamba2_selective_state_update", "mamba2_split_conv1d_scan_combined")


@pytest.fixture(autouse=True, scope="module")
def fp32_parity():
    """Make both models compute in IEEE fp32, so that fp32 tolerances hold on a GPU too.

    On CUDA: no TF32 in matmuls or cuDNN convolutions (transformers' conv1d is an nn.Conv1d), and
    SDPA's math kernel for both models. Everywhere: transformers' own PyTorch Bamba path, even where
    mamba_ssm or causal_conv1d are installed (transformers then calls their Triton kernels, whose
    fp32 dots run in TF32); its wrappers keep the PyTorch function as `__wrapped__`.
    """
    import transformers.models.bamba.modeling_bamba as hf_bamba

    patched = {name: getattr(hf_bamba, name) for name in _HF_KERNEL_FUNCS if callable(getattr(hf_bamba, name, None))}
    for name, fn in patched.items():
        setattr(hf_bamba, name, inspect.unwrap(fn))
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with contextlib.ExitStack() as stack:
        if DEVICE == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
            for name, fn in patched.items():
                setattr(hf_bamba, name, fn)


TOL = dict(rtol=1e-4, atol=1e-4)
PROMPTS = [  # 41-71 tokens with the byte tokenizer: several 16-token chunks
    "The quick brown fox jumps over the lazy dog, twice.",
    "State space models carry a fixed-size state from one token to the next one.",
    "Chunked scans split the sequence into blocks of Q tokens.",
]


def make_checkpoint(path, *, n_groups, attn_layer_indices=(1,), num_layers=3, seed=0, **overrides):
    """Save a random transformers BambaForCausalLM (made on the CPU: the same weights on every
    machine) and return it on DEVICE in fp32; weights scaled so greedy choices are clear-cut and
    decays slow enough that the SSM state matters across chunks."""
    config = transformers.BambaConfig(
        vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers, num_attention_heads=4,
        num_key_value_heads=2, attn_layer_indices=list(attn_layer_indices), mamba_n_heads=4, mamba_d_head=16,
        mamba_n_groups=n_groups, mamba_d_state=16, mamba_chunk_size=16, **overrides)
    torch.manual_seed(seed)
    model = transformers.BambaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=gen) * 0.5 + 0.05))
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5 - 2.0)
            elif "norm" in name or name.endswith(".D"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    model.save_pretrained(path)
    return _groupwise_gated_norm(model).to(DEVICE)


def _groupwise_gated_norm(model):
    """transformers before 5.23 RMS-normalises the gated output over all SSM groups at once in its
    PyTorch path; Mamba2 (mamba_ssm's RMSNormGated, which Bamba checkpoints were trained with),
    our model and later transformers normalise each group on its own. With one group both agree.
    For an older transformers, give its norms the group-wise definition so the comparison holds."""
    for layer in model.model.layers:
        mixer = getattr(layer, "mamba", None)
        if mixer is not None and not hasattr(mixer.norm, "group_size"):
            group_size = mixer.intermediate_size // mixer.n_groups
            mixer.norm.forward = functools.partial(_groupwise_forward, mixer.norm, group_size)
    return model


def _groupwise_forward(norm, group_size, hidden_states, gate):
    h = hidden_states.float() * torch.nn.functional.silu(gate.float())
    h = h.unflatten(-1, (-1, group_size))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.flatten(-2).to(hidden_states.dtype)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two checkpoints: n_groups 1 and n_groups 2 (4 heads), each [mamba, attention, mamba]."""
    out = {}
    for g in (1, 2):
        path = tmp_path_factory.mktemp(f"bamba_g{g}")
        out[g] = (path, make_checkpoint(path, n_groups=g, seed=g))
    return out


def ids_of(prompt):
    return torch.tensor([tiny_tokenizer()(prompt)["input_ids"]], device=DEVICE)


def load(path, **kwargs):
    """Our model from a checkpoint, on DEVICE (stated, not left to from_pretrained's default)."""
    return BambaForCausalLM.from_pretrained(path, device=DEVICE, **kwargs)


def assert_logits_close(actual, expected, **tol):
    """Compare on the CPU, in the models' own dtype, with fp32 tolerances unless told otherwise."""
    assert actual.device.type == expected.device.type == torch.device(DEVICE).type
    torch.testing.assert_close(actual.cpu(), expected.cpu(), **(tol or TOL))


def hf_greedy(model, ids, n):
    """transformers' greedy continuation, recomputing the whole sequence each step (no cache quirks)."""
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, -n:].tolist()


# The Triton strategies take seconds per forward under the interpreter: one checkpoint each.
@pytest.mark.parametrize("strategy,g", [("reference", 1), ("reference", 2), ("default", 1), ("optimized", 2)])
def test_logits_match_transformers(ckpts, strategy, g):
    path, hf = ckpts[g]
    ids = ids_of(PROMPTS[g])
    ours = load(path, strategy=strategy)
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
        assert_logits_close(got, expected)
        assert_logits_close(ours(ids, logits_to_keep=1), expected[:, -1:])


@pytest.mark.parametrize("strategy, backend", [("reference", "torch"), ("default", "triton")])
def test_one_token_with_cache_matches_transformers(ckpts, strategy, backend, one_launch_on_cpu):
    """A one-token step attends with each KV head's query heads as that head's queries (no copy of
    the cached keys; with the "triton" backend by `kernels.decode_attention`, which on the CPU runs
    under the interpreter here); its logits are transformers' for the same position, after a
    cached prefix."""
    path, hf = ckpts[1]
    ids = ids_of(PROMPTS[1])
    ours = load(path, strategy=strategy)
    ours.set_strategy(strategy, backend=backend)
    with torch.no_grad():
        expected = hf(ids).logits[:, -1:]
        cache = ours.new_cache(1, ids.shape[1])
        ours(ids[:, :-1], cache=cache, logits_to_keep=1)
        assert_logits_close(ours(ids[:, -1:], cache=cache), expected)


def test_greedy_matches_transformers_with_and_without_cache(ckpts):
    path, hf = ckpts[2]
    ours = load(path, strategy="reference")
    tok = tiny_tokenizer()
    expected = hf_greedy(hf, ids_of(PROMPTS[0]), 20)
    for use_cache in (True, False):
        (gen,) = bamba.generate(ours, tok, [PROMPTS[0]], max_new_tokens=20, use_cache=use_cache, stop_at_eos=False)
        assert gen.token_ids == expected, f"use_cache={use_cache}"


@pytest.mark.parametrize("strategy", ["default", "optimized"])
def test_triton_greedy_with_cache_matches_reference(ckpts, strategy):
    """Prefill by the chunked scan, then 19 recurrent steps: same tokens as transformers."""
    path, hf = ckpts[1]
    ours = load(path, strategy=strategy)
    (gen,) = bamba.generate(ours, tiny_tokenizer(), [PROMPTS[1]], max_new_tokens=20, stop_at_eos=False)
    assert gen.token_ids == hf_greedy(hf, ids_of(PROMPTS[1]), 20)


def test_triton_greedy_without_cache(ckpts):
    path, hf = ckpts[2]
    ours = load(path, strategy="default")
    (gen,) = bamba.generate(ours, tiny_tokenizer(), [PROMPTS[2]], max_new_tokens=3, use_cache=False,
                            stop_at_eos=False)
    assert gen.token_ids == hf_greedy(hf, ids_of(PROMPTS[2]), 3)


def test_independent_is_chunk_local(ckpts):
    """Equal to the exact scan within the first chunk, different after it; decoding token by
    token from the cache resets the state at chunk boundaries exactly as the prefill scan does."""
    path, _ = ckpts[1]
    ids = ids_of(PROMPTS[1])[:, :40]
    exact = load(path, strategy="reference")
    ours = load(path, strategy="independent")
    with torch.no_grad():
        full = ours(ids)
        want = exact(ids)
        assert_logits_close(full[:, :16], want[:, :16])
        assert (full[:, 16:] - want[:, 16:]).abs().amax() > 1e-2
        cache = ours.new_cache(1, 40)
        stepped = [ours(ids[:, :13], cache=cache)[:, -1]]
        stepped += [ours(ids[:, t:t + 1], cache=cache)[:, -1] for t in range(13, 19)]  # crosses position 16
    assert_logits_close(torch.stack(stepped, 1), full[:, 12:19])


@pytest.mark.parametrize("strategy", ["reference", "independent"])
def test_left_padding_equals_batch_of_one(ckpts, strategy):
    """Mixed lengths in one left-padded batch: each row's logits are its batch-of-one logits."""
    path, _ = ckpts[2]
    ours = load(path, strategy=strategy)
    tok = tiny_tokenizer()
    rows = [tok(p)["input_ids"][:n] for p, n in zip(PROMPTS, (20, 45, 33))]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows], device=DEVICE)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=DEVICE)
    with torch.no_grad():
        batched = ours(ids, mask)
        for i, r in enumerate(rows):
            alone = ours(torch.tensor([r], device=DEVICE))
            assert_logits_close(batched[i, width - len(r):], alone[0])


def test_num_layers_keeps_the_first_layers(ckpts):
    path, hf = ckpts[1]
    ours = load(path, strategy="reference", num_layers=2)
    assert len(ours.model.layers) == 2 and ours.config.attn_layer_indices == [1]
    layers = hf.model.layers  # the module-scoped reference model is shared: put its layers back after
    hf.model.layers = layers[:2]
    ids = ids_of(PROMPTS[0])
    try:
        with torch.no_grad():
            assert_logits_close(ours(ids), hf(ids).logits)
    finally:
        hf.model.layers = layers


def test_sharded_bf16_checkpoint(tmp_path):
    hf = make_checkpoint(tmp_path / "src", n_groups=1, attn_layer_indices=(0,), num_layers=2)
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ours = load(tmp_path / "sharded", strategy="reference")
    assert ours.dtype == torch.bfloat16  # the checkpoint's dtype by default
    ids = ids_of(PROMPTS[0])
    with torch.no_grad():
        got, want = ours(ids).float(), hf(ids).logits.float()
    # bf16 rounding along 2 layers: compare with a bf16-sized tolerance
    assert_logits_close(got, want, rtol=0.05, atol=0.1 * want.abs().max().item())
    as_fp32 = load(tmp_path / "sharded", dtype="float32", strategy="reference")
    assert as_fp32.dtype == torch.float32 and as_fp32.device.type == torch.device(DEVICE).type


def test_from_config_is_seeded_and_config_round_trips(tmp_path):
    config = BambaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=4,
                         mamba_d_state=16, mamba_chunk_size=16)
    a, b = (BambaForCausalLM.from_config(config, strategy="reference", seed=7, device=DEVICE) for _ in range(2))
    assert a.device.type == torch.device(DEVICE).type
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert config.mamba_d_head == 16
    hf_config = transformers.BambaConfig(**{k: v for k, v in config.to_dict().items() if k not in ("dtype",)})
    assert hf_config.mamba_d_head == 16 and hf_config.layers_block_type == ["linear_attention", "full_attention"]
    assert BambaConfig.from_dict(config.to_dict()) == config


def test_decay_rates_per_mamba_layer_and_their_gradients():
    """A = −exp(A_log) of each Mamba2 layer (attention layers have none), computed for all layers
    at once; training still reaches every layer's A_log."""
    config = BambaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=4,
                         mamba_d_state=16, mamba_chunk_size=16)
    model = BambaForCausalLM.from_config(config, strategy="reference", seed=3, device=DEVICE)
    with torch.no_grad():
        for i in (0, 2):
            model.model.layers[i].mamba.A_log.copy_(torch.randn(4))
    rates = model._decay_rates()
    assert sorted(rates) == [0, 2]
    for i in (0, 2):
        want = -torch.exp(model.model.layers[i].mamba.A_log.double())
        torch.testing.assert_close(rates[i].double(), want, rtol=1e-6, atol=0)
    model.requires_grad_(True)  # from_config builds an inference model
    model(torch.randint(0, 64, (1, 20), device=DEVICE)).float().pow(2).mean().backward()
    for i in (0, 2):
        grad = model.model.layers[i].mamba.A_log.grad
        assert grad is not None and grad.abs().sum() > 0


def test_set_strategy(ckpts):
    model = load(ckpts[1][0], strategy="reference")
    assert model.chunk_size == 16  # the checkpoint's
    assert model.set_strategy("independent", 32) is model and (model.strategy, model.chunk_size) == ("independent", 32)
    with pytest.raises(ValueError, match="strategy: expected one of"):
        model.set_strategy("fastest")
    for bad in (8, 24, 0, 16.0):
        with pytest.raises(ValueError, match="power of two >= 16"):
            model.set_strategy("default", bad)


# ---------------------------------------------------------------------------------------------
# Bad inputs


def test_a_failed_hub_download_is_one_line(monkeypatch):
    """What the Hub client raises can span lines; the CLI prints errors as one line."""
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("Cannot reach the Hub.\nAn error happened while trying to locate the files.")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError) as err:
        BambaForCausalLM.from_pretrained("someone/model")
    assert str(err.value) == ("someone/model: not a local directory, and the Hub download failed: "
                              "ConnectionError: Cannot reach the Hub.")


def test_missing_and_corrupt_files(ckpts, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        BambaForCausalLM.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        BambaForCausalLM.from_pretrained(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        BambaForCausalLM.from_pretrained(bad)
    (bad / "config.json").write_text((ckpts[1][0] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        BambaForCausalLM.from_pretrained(bad)
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        BambaForCausalLM.from_pretrained(bad)


def test_wrong_model_type_and_shapes(ckpts, tmp_path):
    config = json.loads((ckpts[1][0] / "config.json").read_text())
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type is 'llama', expected 'bamba'"):
        BambaForCausalLM.from_pretrained(llama)
    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "config.json").write_text(json.dumps({**config, "mamba_d_state": 32}))
    (wide / "model.safetensors").symlink_to(ckpts[1][0] / "model.safetensors")
    with pytest.raises(ValueError, match="has shape"):
        BambaForCausalLM.from_pretrained(wide)
    with pytest.raises(ValueError, match="strategy: expected one of"):
        BambaForCausalLM.from_pretrained(ckpts[1][0], strategy="fast")
    with pytest.raises(ValueError, match="num_layers"):
        BambaForCausalLM.from_pretrained(ckpts[1][0], num_layers=9)


def test_sequence_longer_than_the_model_limit(tmp_path):
    make_checkpoint(tmp_path, n_groups=1, max_position_embeddings=32)
    model = load(tmp_path, strategy="reference")
    with pytest.raises(ValueError, match="longer than the model's limit"):
        model(torch.zeros(1, 33, dtype=torch.long, device=DEVICE))
    with pytest.raises(ValueError, match="exceed the model's limit of 32 tokens"):
        bamba.generate(model, tiny_tokenizer(), [PROMPTS[0]], max_new_tokens=4)


def test_bad_attention_masks(ckpts):
    model = load(ckpts[1][0], strategy="reference")
    ids = torch.ones(2, 5, dtype=torch.long, device=DEVICE)

    def mask(rows):
        return torch.tensor(rows, device=DEVICE)

    with pytest.raises(ValueError, match="only left padding"):
        model(ids, mask([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="at least one real token"):
        model(ids, mask([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="expected shape"):
        model(ids, torch.ones(2, 4, device=DEVICE))
    assert math.isfinite(model(ids, mask([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])).abs().max().item())
