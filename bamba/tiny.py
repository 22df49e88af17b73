"""`tiny-random`: a small Bamba with seeded random weights and a byte-level tokenizer, both built
offline, for tests and dry runs of the whole pipeline. Its outputs are noise, deterministically."""

from __future__ import annotations

from .modeling_bamba import BambaConfig, BambaForCausalLM

NAME = "tiny-random"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2 as in Bamba's config; bytes follow


def tiny_config() -> BambaConfig:
    """4 layers (attention at layer 2), 4 Mamba heads of 32 channels, 64-token chunks."""
    return BambaConfig(
        vocab_size=len(SPECIAL_TOKENS) + 256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[2], mamba_n_heads=4, mamba_d_head=32,
        mamba_n_groups=1, mamba_d_state=16, mamba_chunk_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        dtype="float32")


def tiny_tokenizer():
    """Byte-level tokenizer (every UTF-8 byte one token) that prepends <s>; needs no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *alphabet])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_model(*, strategy: str = "default", chunk_size: int | None = None, num_layers: int | None = None,
               dtype=None, device=None, seed: int = 0) -> BambaForCausalLM:
    config = tiny_config()
    if num_layers is not None:
        config = config.truncated(num_layers)
    model = BambaForCausalLM.from_config(config, strategy=strategy, chunk_size=chunk_size, dtype=dtype,
                                         device=device, seed=seed)
    model.name_or_path = NAME
    return model
