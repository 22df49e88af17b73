"""Sharding a record-writing job across processes (gloo on CPU, as under torchrun)."""

import json
import os
import socket

import pytest
import torch.multiprocessing as mp

from gptscore_eval import records
from gptscore_eval.distributed import ShardedWriter, shard_path

TODO = [{"id": f"p{i}", "prompt": f"question {i}?", "reference": f"answer {i}."} for i in range(11)]


def job(out, fail_after=None):
    """A stand-in for generate/score: writes one prompt record per pending item."""
    with ShardedWriter(out, "prompts") as w:
        for n, item in enumerate(w.share(w.pending(TODO))):
            if fail_after is not None and n == fail_after:
                raise RuntimeError("simulated failure")
            w.write({**item, "token_len": len(item["prompt"])})


def _worker(rank, world_size, port, out):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    if torch.cuda.is_available():
        # world() would join with NCCL and take cuda:RANK, which a one-GPU machine lacks; this job
        # only needs gloo's barriers. Without a GPU, world() joins with gloo itself.
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    job(out)
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_lines(path):
    return [{k: v for k, v in r.items() if k != "run_id"} for r in records.read_records(path).records]


def test_two_gloo_processes_write_exactly_the_single_process_records(tmp_path):
    single, sharded = tmp_path / "single.jsonl", tmp_path / "sharded.jsonl"
    job(single)
    mp.start_processes(_worker, args=(2, free_port(), sharded), nprocs=2, join=True, start_method="spawn")
    assert data_lines(sharded) == data_lines(single)  # same records, same order
    assert not list(tmp_path.glob("*.rank*"))
    merged = records.read_records(sharded)
    ranks = {m["rank"] for m in merged.meta[0]["merged_from"]}
    assert ranks == {0, 1}
    assert {r["run_id"] for r in merged.records} == {m["run_id"] for m in merged.meta[0]["merged_from"]}


def test_failed_ranks_keep_their_records_and_a_rerun_finishes(tmp_path):
    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="simulated"):
        job(out, fail_after=3)  # a first run that died after 3 records
    # Leftover shards of a distributed run that died: rank 0 wrote p4 and p6, rank 1 wrote p5
    # and was cut off while writing p7.
    for rank, items in ((0, [TODO[4], TODO[6]]), (1, [TODO[5]])):
        with records.RecordWriter(shard_path(out, rank), "prompts") as w:
            for item in items:
                w.write({**item, "token_len": len(item["prompt"])})
    with open(shard_path(out, 1), "a") as f:
        f.write(json.dumps(TODO[7])[:20])

    job(out)
    lines = data_lines(out)
    # First run's records, then the leftover shards (in file order), then the rest.
    assert [r["id"] for r in lines] == [f"p{i}" for i in (0, 1, 2, 4, 5, 6, 3, 7, 8, 9, 10)]
    assert sorted(r["id"] for r in lines) == sorted(t["id"] for t in TODO)  # nothing lost or repeated
    assert not list(tmp_path.glob("*.rank?"))
    assert (tmp_path / "out.jsonl.rank1.partial").exists()  # the fragment is kept aside
    job(out)  # a later run merges shards only, not the fragment kept aside
    assert data_lines(out) == lines


@pytest.mark.parametrize("world_size", [2, 3])
def test_shares_partition_the_pending_list(tmp_path, monkeypatch, world_size):
    shares = []
    for rank in range(world_size):
        monkeypatch.setattr("gptscore_eval.distributed.world", lambda r=rank: (r, world_size))
        with ShardedWriter(tmp_path / "x.jsonl", "prompts") as w:
            shares.append([t["id"] for t in w.share(w.pending(TODO + TODO[:2]))])
    flat = sorted(i for share in shares for i in share)
    assert flat == sorted(t["id"] for t in TODO)
