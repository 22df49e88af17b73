"""`generate` and `score` split across 2 gloo processes (as under torchrun) write exactly the
records of a single-process run, in the same order.

Every process runs on the same DEVICE, stated rather than left to each rank's default (cuda:RANK,
which a one-GPU machine lacks), so single-process and sharded records are comparable: the GPU
when there is one (where the Triton strategies need CUDA tensors), else the CPU; fp32 throughout.
"""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from gptscore_eval import records
from gptscore_eval.generate import generate_outputs
from gptscore_eval.scoring import score_outputs

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "data", "demo.jsonl")
DEVICE = "cuda:0" if torch.cuda.is_available() else "cpu"
GENERATE = dict(strategies="reference,independent", max_new_tokens=4, limit=3, batch_size=2, chunk_size=16, device=DEVICE,
                dtype="float32", progress=False)
# The scorer would default to bf16 on a GPU: pin fp32, as the comparison below is to 1e-5.
SCORE = dict(aspects=["plain", "fluency"], device=DEVICE, dtype="float32", progress=False)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, job, args):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    if torch.cuda.is_available():
        # world() would join with NCCL, one GPU per rank (cuda:1 does not exist on a one-GPU machine);
        # these ranks share DEVICE and only need gloo's barriers. Without a GPU, world() picks gloo itself.
        dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        job(*args)
    finally:
        dist.destroy_process_group()


def run_on_two_ranks(job, *args):
    mp.start_processes(_worker, args=(free_port(), job, args), nprocs=2, join=True, start_method="spawn")


def _generate(out, written=None):
    summary = generate_outputs("tiny-random", DATA, out, **GENERATE)
    assert written is None or summary["written"] == written  # the whole run's count, on every rank


def _score(outputs, out, scorer_dir, written=None):
    summary = score_outputs(outputs, out, scorer=str(scorer_dir), **SCORE)
    assert written is None or summary["written"] == written


@pytest.fixture(scope="module")
def scorer_dir(tmp_path_factory):
    """A tiny random Llama with the byte-level tokenizer, saved like any local checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from bamba.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    path = tmp_path_factory.mktemp("scorer")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def data_of(path, ignore=("run_id", "timings", "peak_memory_bytes")):
    return [{k: v for k, v in r.items() if k not in ignore} for r in records.read_records(path).records]


def test_generate_and_score_on_two_ranks_equal_one_process(tmp_path, scorer_dir):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    single.mkdir(), sharded.mkdir()
    _generate(single / "outputs.jsonl")
    run_on_two_ranks(_generate, sharded / "outputs.jsonl", len(data_of(single / "outputs.jsonl")))
    assert data_of(sharded / "outputs.jsonl") == data_of(single / "outputs.jsonl")
    meta = records.read_records(sharded / "outputs.jsonl").meta
    assert {m["rank"] for m in meta[0]["merged_from"]} == {0, 1}

    _score(single / "outputs.jsonl", single / "scores.jsonl", scorer_dir)
    run_on_two_ranks(_score, single / "outputs.jsonl", sharded / "scores.jsonl", scorer_dir,
                     len(data_of(single / "scores.jsonl")))
    # Whole batches move between ranks, so each record is computed exactly as by one process.
    assert data_of(sharded / "scores.jsonl") == data_of(single / "scores.jsonl")
    assert not list(tmp_path.glob("*/*.rank*"))

    # A rerun finds nothing to do in the merged file and changes nothing.
    before = (sharded / "outputs.jsonl").read_bytes()
    _generate(sharded / "outputs.jsonl")
    assert (sharded / "outputs.jsonl").read_bytes() == before
