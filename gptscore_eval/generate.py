"""Step 1 of the experiment: generate outputs for a prompt set with each SSD strategy.

`generate_outputs` loops strategies x prompts, writes one OUTPUTS record per pair to a JSONL
file as soon as its batch is done, and skips pairs already in the file, so an interrupted run
resumes where it stopped. The model is loaded once; strategies are switched on it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from gptscore_eval import records
from gptscore_eval.distributed import ShardedWriter, check_device, default_device, work_units

TINY = "tiny-random"
# Models shipped with the project, by name: the small Bamba distilled from SmolLM2-135M-Instruct.
EMBEDDED = {"bamba-tiny": Path(__file__).resolve().parent.parent / "data" / "models" / "bamba-tiny"}


def load_model(name: str, *, strategy: str = "default", chunk_size: int | None = None,
               num_layers: int | None = None, dtype: str | None = None, device: str | None = None):
    """(model, tokenizer) for a checkpoint directory, a Hub id, `tiny-random` or an EMBEDDED name."""
    if name == TINY:
        from bamba.tiny import tiny_model, tiny_tokenizer

        return tiny_model(strategy=strategy, chunk_size=chunk_size, num_layers=num_layers, dtype=dtype,
                          device=device), tiny_tokenizer()
    from bamba import BambaForCausalLM
    from transformers import AutoTokenizer

    model = BambaForCausalLM.from_pretrained(EMBEDDED.get(name, name), strategy=strategy, chunk_size=chunk_size,
                                             num_layers=num_layers, dtype=dtype, device=device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model.path))
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{name}: no usable tokenizer in {model.path} ({type(err).__name__}: {err})") from None
    return model, tokenizer


def check_strategies(strategies) -> list[str]:
    from bamba import STRATEGIES

    names = [s.strip() for s in (strategies.split(",") if isinstance(strategies, str) else strategies)]
    if not names or not all(names):
        raise ValueError(f"strategies: expected a comma-separated list of {', '.join(STRATEGIES)}, got {strategies!r}")
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"strategies: unknown {', '.join(map(repr, unknown))}; "
                         f"expected some of {', '.join(STRATEGIES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"strategies: listed twice in {strategies!r}")
    return names


def generate_outputs(model: str, data: str | os.PathLike, out: str | os.PathLike, *,
                     strategies=("default",), max_new_tokens: int, num_layers: int | None = None,
                     chunk_size: int | None = None, use_cache: bool = True, limit: int | None = None,
                     batch_size: int = 1, device: str | None = None, dtype: str | None = None, seed: int = 0,
                     do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None, chat_template: bool | None = None, backend: str | None = None,
                     progress: bool = True) -> dict:
    """Write OUTPUTS records for every (prompt, strategy) not yet in `out`; return counts.

    `model` is a checkpoint directory, a Hub id, "tiny-random" or "bamba-tiny"; `limit` keeps the
    first K prompts. Sampling (off by default) seeds prompt i of the set with `seed + i`, so a
    resumed run samples what an uninterrupted one would. `chat_template`: see `bamba.generate`.
    `backend`: "triton" (the strategies' kernels) or "torch" (their PyTorch definitions, see
    `bamba.ssd.BACKENDS`); default: triton on a GPU, torch on a CPU, where the kernels would run
    under the Triton interpreter (the tests' way to check them, far too slow for a model).
    """
    from tqdm import tqdm

    from bamba import generate
    from bamba.generation import uses_chat_template
    from bamba.kernels.utils import check_chunk_size

    strategies = check_strategies(strategies)
    check_device(device)
    if chunk_size is not None:
        check_chunk_size(chunk_size)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: expected an integer >= 1, got {limit!r}")
    prompts = records.read_records(data, "prompts").records[:limit]
    settings = {"model": model, "data": str(data), "strategies": strategies, "max_new_tokens": max_new_tokens,
                "num_layers": num_layers, "chunk_size": chunk_size, "use_cache": use_cache, "limit": limit,
                "batch_size": batch_size, "device": device, "dtype": dtype, "seed": seed, "do_sample": do_sample,
                "temperature": temperature, "top_k": top_k, "top_p": top_p, "chat_template": chat_template,
                "backend": backend}
    # Settings that change what is generated: a resumed file must not mix two sets of them.
    same = {"max_new_tokens": max_new_tokens, "use_cache": use_cache, "do_sample": do_sample,
            "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed}
    with ShardedWriter(out, "outputs", records.run_metadata(settings)) as writer:
        if writer.written:
            _check_resume(out, writer.written, {"model": model, **same})
        pending = writer.pending({"id": p["id"], "strategy": s, "index": i}
                                 for s in strategies for i, p in enumerate(prompts))
        # The batches one process would run; under torchrun each rank takes every world_size-th one.
        batches = [(s, [(t["index"], prompts[t["index"]]) for t in unit])
                   for s, unit in work_units(pending, "strategy", strategies, batch_size)]
        mine = writer.share(batches)
        total = sum(len(batch) for _, batch in mine)
        # what the run adds to the file, all ranks together (each rank writes its share or fails)
        summary = {"out": str(out), "written": len(pending), "skipped": writer.skipped}
        if writer.written:  # the settings given explicitly, checked even when nothing is left to do
            given = {"chunk_size": chunk_size, "dtype": _dtype_name(dtype), "num_layers": num_layers,
                     "chat_template": chat_template, "backend": backend}
            _check_resume(out, writer.written, {k: v for k, v in given.items() if v is not None})
        if not total:  # nothing to do here: do not even load the model
            return summary
        if device is None and writer.world_size > 1:
            device = default_device()
        lm, tokenizer = load_model(model, strategy=strategies[0], chunk_size=chunk_size, num_layers=num_layers,
                                   dtype=dtype, device=device)
        lm.set_strategy(lm.strategy, chunk_size, backend=backend or ("triton" if lm.device.type == "cuda" else "torch"))
        chat = uses_chat_template(tokenizer, chat_template)
        _check_lengths(data, [p for _, batch in mine for _, p in batch], tokenizer, lm, max_new_tokens, chat)
        graph = use_cache and lm.device.type == "cuda"  # decode steps replayed from a CUDA graph: timings differ
        generation = {**same, "batch_size": batch_size, "stop_at_eos": True, "chat_template": chat,
                      "backend": lm.backend, "cuda_graph": graph, "num_layers": lm.config.num_hidden_layers,
                      "dtype": str(lm.dtype).removeprefix("torch.")}
        if writer.written:
            _check_resume(out, writer.written, {"chunk_size": lm.chunk_size, "dtype": generation["dtype"],
                                                "num_layers": generation["num_layers"], "chat_template": chat,
                                                "backend": lm.backend})
        device_name = _device_name(lm.device)
        with tqdm(total=total, desc="generate", unit="output", disable=not progress or writer.rank > 0) as bar:
            for strategy, batch in mine:
                if strategy != lm.strategy:
                    lm.set_strategy(strategy, chunk_size)
                bar.set_postfix(strategy=strategy)
                outputs = generate(lm, tokenizer, [p["prompt"] for _, p in batch], max_new_tokens=max_new_tokens,
                                   use_cache=use_cache, do_sample=do_sample, temperature=temperature,
                                   top_k=top_k, top_p=top_p, seed=[seed + i for i, _ in batch],
                                   batch_size=batch_size, chat_template=chat, cuda_graph=graph)
                for (_, prompt), g in zip(batch, outputs):
                    writer.write({
                        "id": prompt["id"], "strategy": strategy, "chunk_size": lm.chunk_size, "model": model,
                        "prompt": prompt["prompt"], "reference": prompt["reference"], "output": g.text,
                        "prompt_tokens": g.prompt_tokens, "output_tokens": g.output_tokens,
                        "num_chunks": math.ceil(g.prompt_tokens / lm.chunk_size), "generation": generation,
                        "finish_reason": g.finish_reason, "timings": g.timings(),
                        "peak_memory_bytes": g.peak_memory_bytes, "device": device_name})
                    bar.update(1)
    return summary


def _check_resume(out, written: list[dict], expected: dict) -> None:
    """Refuse to append to a file whose outputs were made with another model or other settings."""
    for r in written:
        for name, value in expected.items():
            old = r[name] if name in ("model", "chunk_size") else r["generation"].get(name, value)
            if old != value:
                raise ValueError(f"{out}: holds outputs made with {name}={old!r}, not {value!r}; "
                                 "use the same settings to resume, or write to another file")


def _dtype_name(dtype: str | None) -> str | None:
    """A --dtype as records name it (bf16 -> bfloat16); None stays None (the checkpoint's)."""
    from bamba.modeling_bamba import parse_dtype

    return None if dtype is None else str(parse_dtype(dtype)).removeprefix("torch.")


def _check_lengths(data, prompts, tokenizer, model, max_new_tokens, chat) -> None:
    """Fail before generating anything if some prompt cannot fit the model's context."""
    from bamba.generation import encode_prompt

    limit = model.config.max_position_embeddings
    for p in prompts:
        n = len(encode_prompt(tokenizer, p["prompt"], chat))
        if n + max_new_tokens > limit:
            raise ValueError(f"{data}: prompt {p['id']!r} has {n} tokens; with max_new_tokens {max_new_tokens} it "
                             f"exceeds the model's limit of {limit} tokens")


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


