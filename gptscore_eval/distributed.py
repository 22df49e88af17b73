"""Split a resumable record-writing job across processes started by ``torchrun``.

Every rank sees the same pending list (the keys not yet in the output file), cut into the same
work units (batches) a single process would run, takes every ``world_size``-th unit, and appends
its records to its own shard ``OUT.rankR``. Whole batches move between ranks, never single items,
so every record is computed in the same batch, and on GPUs with the same numerics, as it would be
by one process. At the end rank 0
merges the shards into ``OUT`` in the order of the pending list, so the file reads as a
single-process run would write it. A rank that fails leaves its completed records in its shard;
the next run merges leftover shards before it computes what is pending, so nothing is lost or
redone, and merging skips keys already present, so nothing is duplicated.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.distributed as dist

from gptscore_eval import records


def world() -> tuple[int, int]:
    """(rank, world size), joining the process group that ``torchrun`` describes if needed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=timedelta(hours=2))
    return dist.get_rank(), dist.get_world_size()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def default_device() -> str:
    """This rank's GPU when there are GPUs, else the CPU."""
    return f"cuda:{local_rank()}" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None, *, allow_auto: bool = False) -> None:
    """A one-line error, before any work, for a device name torch does not parse or a GPU this
    machine does not have (None: the default; "auto": spread over all GPUs, where allowed)."""
    if device is None or (allow_auto and device == "auto"):
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: {device!r} is not a device name (cpu, cuda, cuda:1, ...)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"device: {device!r}, but torch sees no CUDA GPU on this machine")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"device: {device!r}, but this machine has {count} CUDA GPU(s)")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


SHARD_SUFFIX = ".rank"  # PATH.rankR: rank R's records


def shard_path(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.name}{SHARD_SUFFIX}{rank}")


def merge_shards(path: Path, kind: records.Kind, order: Iterable[tuple] = ()) -> int:
    """Append the records of every ``PATH.rankR`` to PATH (in ``order``, then file order), skip
    keys already there, and delete the shards; return how many records were added."""
    # PATH.rankR only: not the PATH.rankR.partial that repairing a crashed rank's shard leaves
    prefix = path.name + SHARD_SUFFIX
    shards = sorted(p for p in path.parent.glob(prefix + "*") if p.name.removeprefix(prefix).isdigit())
    if not shards:
        return 0
    for shard in shards:
        records.repair_partial_last_line(shard)
    files = [records.read_records(shard, kind, allow_empty=True) for shard in shards]
    target = records.RecordWriter(path, kind, records.run_metadata(merged_from=[m for f in files for m in f.meta]))
    rank_of = {key: i for i, key in enumerate(order)}
    gathered: list[tuple[int, int, dict]] = []
    for f in files:
        for number, record in enumerate(f.records):
            if kind.key_of(record) not in target:
                gathered.append((rank_of.get(kind.key_of(record), len(rank_of)), number, record))
    gathered.sort(key=lambda item: item[:2])
    with target:
        for _, _, record in gathered:
            target.write(record)  # keeps the run id of its rank, whose meta is in merged_from
    for shard in shards:
        shard.unlink()
    return len(gathered)


def work_units(pending: Sequence[dict], field: str, groups: Sequence, size: int) -> list[tuple]:
    """The units of work one process runs, in its order: for each group, the pending records with
    ``record[field] == group`` in runs of ``size``, as (group, records). ShardedWriter.share deals
    them out to the ranks."""
    units = []
    for group in groups:
        members = [r for r in pending if r[field] == group]
        units += [(group, members[start:start + size]) for start in range(0, len(members), size)]
    return units


class ShardedWriter:
    """A RecordWriter for this rank's share of a job; a plain one when there is one process.

    Use: ``with ShardedWriter(out, kind, meta) as w: for batch in w.share(batches(w.pending(todo))):
    ...; w.write(record)`` — ``todo`` must be the same list, in the same order, on every rank.
    """

    def __init__(self, path: str | os.PathLike, kind: str | records.Kind, meta: dict | None = None):
        self.path = Path(path)
        self.kind = records.KINDS[kind] if isinstance(kind, str) else kind
        self.meta = meta if meta is not None else records.run_metadata()
        self.rank, self.world_size = world()
        self.meta.setdefault("rank", self.rank)
        self.meta.setdefault("world_size", self.world_size)
        self._order: list[tuple] = []
        self.written: list[dict] = []  # the records already in the file
        self.written_meta: list[dict] = []  # and its run metadata lines
        self.skipped = 0  # records asked for in ``pending`` that were already there
        self._writer: records.RecordWriter | None = None

    def __enter__(self) -> "ShardedWriter":
        if self.rank == 0:
            merge_shards(self.path, self.kind)  # leftovers of a run that failed
        if self.world_size == 1:  # the plain writer repairs and reads the file itself
            self._writer = records.RecordWriter(self.path, self.kind, self.meta)
            self.written, self.written_meta = self._writer.existing, self._writer.existing_meta
        else:
            if self.rank == 0 and self.path.exists():
                records.repair_partial_last_line(self.path)
            barrier()
            if self.path.exists():
                found = records.read_records(self.path, self.kind, allow_empty=True)
                self.written, self.written_meta = found.records, found.meta
            self._writer = records.RecordWriter(shard_path(self.path, self.rank), self.kind, self.meta)
        self._done = {self.kind.key_of(r) for r in self.written}
        return self

    def pending(self, todo: Iterable[dict]) -> list[dict]:
        """The records of ``todo`` whose key is not written yet (the same list on every rank)."""
        remaining, self.skipped = records.split_done(self.kind, todo, self._done)
        self._order = [self.kind.key_of(r) for r in remaining]
        return remaining

    def share(self, units: Sequence) -> list:
        """This rank's units of work (e.g. batches of pending records): every world_size-th one."""
        return list(units[self.rank :: self.world_size])

    def write(self, record: dict) -> None:
        self._writer.write(record)

    def __exit__(self, exc_type, *exc) -> None:
        self._writer.close()
        if self.world_size == 1 or exc_type is not None:
            return  # a failed rank's shard is merged by the next run
        barrier()
        if self.rank == 0:
            merge_shards(self.path, self.kind, self._order)
        barrier()
