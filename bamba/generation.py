"""Text generation with per-request timings: prefill (time to first token), every decode step,
total, tokens/s, peak device memory.

Greedy by default (deterministic, so differences between strategies are the kernels' doing);
sampling on request, from one seeded generator per prompt, so a prompt samples the same
tokens whatever batch it is in. Timers wait for the device (torch.cuda.synchronize) on GPU.
On GPUs the decode step is replayed from a CUDA graph (`GraphedDecoder`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class Generation:
    """One prompt's output. In a batch, the timings are the batch's, up to this row's last token."""

    prompt: str
    text: str
    token_ids: list[int]         # generated tokens, without the stopping EOS
    prompt_tokens: int
    finish_reason: str           # "eos" or "length"
    prefill_s: float             # time to first token: the forward pass over the prompt + sampling
    decode_s: list[float]        # seconds of each later token
    total_s: float
    peak_memory_bytes: int | None  # torch.cuda.max_memory_allocated over the batch; None on CPU

    @property
    def output_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second, end to end (prefill included)."""
        return self.output_tokens / self.total_s if self.total_s > 0 else 0.0

    def timings(self) -> dict:
        return {"prefill_s": self.prefill_s, "decode_s": list(self.decode_s), "total_s": self.total_s,
                "tokens_per_s": self.tokens_per_s}


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, use_cache: bool = True,
             do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | list[int] = 0, batch_size: int = 1,
             stop_at_eos: bool = True, chat_template: bool | None = None,
             cuda_graph: bool | None = None) -> list[Generation]:
    """Generate up to `max_new_tokens` for each prompt with `model`'s current strategy.

    Batches of `batch_size` prompts are left-padded. `use_cache=False` recomputes the whole
    sequence at every step (the seed study's performance mode) instead of decoding from the cache.
    Prompt i samples from its own generator seeded with `seed + i`, or `seed[i]` for a list.
    Each prompt is one user turn of the tokenizer's chat template where it has one (see
    `encode_prompt`; `chat_template=False` encodes the bare prompt).
    `cuda_graph` (default: on CUDA with the cache) replays the decode step from a CUDA graph;
    the tokens are the same as without.
    """
    if isinstance(prompts, str):
        raise ValueError("prompts: expected a list of strings, got one string")
    _check_settings(max_new_tokens, temperature, top_k, top_p, batch_size)
    if cuda_graph is None:
        cuda_graph = use_cache and model.device.type == "cuda"
    elif cuda_graph and (not use_cache or model.device.type != "cuda"):
        raise ValueError(f"cuda_graph: needs use_cache=True and a model on a CUDA device, got "
                         f"use_cache={use_cache}, device {model.device}")
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed + i for i in range(len(prompts))]
    if len(seeds) != len(prompts):
        raise ValueError(f"seed: expected one seed per prompt ({len(prompts)}), got {len(seeds)}")
    encoded = [encode_prompt(tokenizer, p, chat_template) for p in prompts]
    limit = model.config.max_position_embeddings
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i}: encodes to no tokens")
        if len(ids) + max_new_tokens > limit:
            raise ValueError(f"prompt {i}: {len(ids)} tokens + max_new_tokens {max_new_tokens} exceed the model's "
                             f"limit of {limit} tokens (max_position_embeddings)")
    eos = _eos_ids(model, tokenizer) if stop_at_eos else set()
    out = []
    for start in range(0, len(prompts), batch_size):
        rows = range(start, min(start + batch_size, len(prompts)))
        generators = [torch.Generator(device=model.device).manual_seed(seeds[i]) for i in rows]
        sample = _sampler(do_sample, temperature, top_k, top_p, generators)
        out += _generate_batch(model, tokenizer, [prompts[i] for i in rows], [encoded[i] for i in rows],
                               max_new_tokens, use_cache, sample, eos, cuda_graph)
    return out


def uses_chat_template(tokenizer, chat_template: bool | None = None) -> bool:
    """Whether prompts go through the tokenizer's chat template: an instruction-tuned model
    expects its chat format, so `None` means "when the tokenizer has one"; `True` requires one."""
    has = getattr(tokenizer, "chat_template", None) is not None
    if chat_template and not has:
        raise ValueError("chat_template: the tokenizer has no chat template")
    return has if chat_template is None else chat_template


def encode_prompt(tokenizer, prompt: str, chat_template: bool | None = None) -> list[int]:
    """Token ids of a prompt: one user turn followed by the assistant's header where
    `uses_chat_template`, else the bare prompt."""
    if not uses_chat_template(tokenizer, chat_template):
        return tokenizer(prompt)["input_ids"]
    return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                              tokenize=True, return_dict=True)["input_ids"])


@torch.inference_mode()
def _generate_batch(model, tokenizer, prompts, encoded, max_new_tokens, use_cache, sample, eos,
                    cuda_graph) -> list[Generation]:
    device, b = model.device, len(encoded)
    width = max(len(ids) for ids in encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
    eos_ids = torch.tensor(sorted(eos), dtype=torch.long, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    tokens, step_s = [], []
    finished_at = [None] * b  # index of the EOS among the generated tokens
    _sync(device)
    t0 = time.perf_counter()
    cache = model.new_cache(b, width + max_new_tokens) if use_cache else None
    decode = GraphedDecoder(model, cache) if cuda_graph else lambda ids: model(ids, cache=cache)
    logits = model(input_ids, mask, cache, logits_to_keep=1)
    for step in range(max_new_tokens):
        if step:
            if use_cache:
                logits = decode(tokens[-1][:, None])
            else:
                seq = torch.cat([input_ids, torch.stack(tokens, dim=1)], dim=1)
                full_mask = torch.cat([mask, torch.ones(b, step, dtype=mask.dtype, device=device)], dim=1)
                logits = model(seq, full_mask, logits_to_keep=1)
        tokens.append(sample(logits[:, -1].float()))
        done = torch.isin(tokens[-1], eos_ids).tolist()  # also the host sync that ends this step's timer
        _sync(device)
        now = time.perf_counter()
        step_s.append(now - t0)
        t0 = now
        for i in range(b):
            if done[i] and finished_at[i] is None:
                finished_at[i] = step
        if all(f is not None for f in finished_at):
            break

    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    generated = torch.stack(tokens, dim=1).tolist()
    out = []
    for i in range(b):
        steps = len(tokens) if finished_at[i] is None else finished_at[i] + 1
        ids = generated[i][:steps if finished_at[i] is None else steps - 1]
        out.append(Generation(
            prompt=prompts[i], text=tokenizer.decode(ids, skip_special_tokens=True), token_ids=ids,
            prompt_tokens=len(encoded[i]), finish_reason="length" if finished_at[i] is None else "eos",
            prefill_s=step_s[0], decode_s=step_s[1:steps], total_s=sum(step_s[:steps]), peak_memory_bytes=peak))
    return out


class GraphedDecoder:
    """`model`'s decode step on `cache`, replayed from a CUDA graph: at batch 1 a step is ~15 small
    kernels per layer whose launch and Python time exceed their GPU time.

    The first call runs the step eagerly on the capture stream (which also warms up lazily created
    library state there), then captures the step; later calls copy the tokens in and replay.
    The returned logits live in the graph's memory: the next call overwrites them.
    """

    # One capture stream per device for the whole process: cuBLAS keeps a workspace for every
    # stream it has run on, so a new stream per generation would leak one workspace each time.
    _streams: dict = {}

    def __init__(self, model, cache):
        self.model, self.cache = model, cache
        self.graph = None

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if self.graph is not None:
            self.ids.copy_(ids)
            self.graph.replay()
            self.cache.length += 1
            return self.logits
        stream = self._streams.setdefault(ids.device, torch.cuda.Stream(ids.device))
        stream.wait_stream(torch.cuda.current_stream(ids.device))
        with torch.cuda.stream(stream):
            logits = self.model(ids, cache=self.cache)
        torch.cuda.current_stream(ids.device).wait_stream(stream)
        self.ids = ids.clone()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, stream=stream):  # records only: the cache is not advanced here
            self.logits = self.model.decode_step(self.ids, self.cache)
        return logits


def _sampler(do_sample, temperature, top_k, top_p, generators):
    """(b, vocab) fp32 logits -> (b,) next tokens."""
    if not do_sample:
        return lambda logits: logits.argmax(-1)

    def sample(logits):
        # Shifted so the largest is 0 first: a tiny temperature then sends the rest to -inf
        # (near-greedy) instead of overflowing everything to inf (a NaN distribution). Below the
        # smallest normal float it acts as that one (GPUs flush a subnormal divisor to 0: 0/0).
        logits = (logits - logits.amax(-1, keepdim=True)) / max(temperature, torch.finfo(logits.dtype).tiny)
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            # Keep the smallest set of most likely tokens whose probability reaches top_p.
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            drop = probs.cumsum(-1) - probs >= top_p
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = logits.softmax(-1)
        return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)])

    return sample


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _check_settings(max_new_tokens, temperature, top_k, top_p, batch_size):
    def positive_int(name, value):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")

    positive_int("max_new_tokens", max_new_tokens)
    positive_int("batch_size", batch_size)
    if top_k is not None:
        positive_int("top_k", top_k)
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected 0 < top_p <= 1, got {top_p!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
