"""Timed tile choices persist, so every process on a machine computes with the same tiling."""

import json

import pytest
import torch

from bamba.kernels import ssd_common


@pytest.fixture
def gpu_pick(tmp_path, monkeypatch):
    """pick() as on a GPU, with an empty tuning file in tmp_path (CPU torch: nothing is capturing)."""
    monkeypatch.setenv("BAMBA_CACHE", str(tmp_path))
    monkeypatch.setattr(ssd_common, "INTERPRET", False)
    monkeypatch.setattr(ssd_common, "_PICKS", {})
    monkeypatch.setattr(ssd_common.torch.cuda, "is_current_stream_capturing", lambda: False)


def replays_timed_by(speed, timed):
    """A graph_time stand-in: runs fn three times (its replays), then reports the speed of the
    candidate run last."""
    def fake_time(fn, **kwargs):
        for _ in range(3):
            fn()
        return speed[timed[-1]]
    return fake_time


def test_choice_is_timed_once_then_read_back_by_a_fresh_process(gpu_pick, monkeypatch):
    candidates = [{"BM": 64, "num_warps": 4}, {"BM": 128, "num_warps": 8}, {"BM": 32, "num_warps": 4}]
    speed = {64: 3.0, 128: 1.0, 32: 2.0}  # µs: the second candidate is fastest
    timed = []

    def fake_time(fn, **kwargs):
        fn()
        return speed[timed[-1]["BM"]]

    monkeypatch.setattr(ssd_common, "graph_time", fake_time)
    key = ("chunk_scan", 64, 128, 256, 1024, "torch.bfloat16")
    assert ssd_common.pick(key, candidates, timed.append) == candidates[1]
    table = json.loads(ssd_common.tuning_file().read_text())
    assert list(table.values()) == [candidates[1]] and next(iter(table)).startswith(repr(key))

    # A new process (empty in-memory table) must not time again, and must choose the same.
    monkeypatch.setattr(ssd_common, "_PICKS", {})

    def must_not_run(candidate):
        raise AssertionError("timed again")

    assert ssd_common.pick(key, candidates, must_not_run) == candidates[1]
    # A candidate list that no longer holds the stored choice is timed afresh.
    monkeypatch.setattr(ssd_common, "_PICKS", {})
    assert ssd_common.pick(key, [candidates[0], candidates[2]], timed.append) == candidates[2]
    # So is a list that gained a candidate (the stored choice may no longer be the fastest).
    monkeypatch.setattr(ssd_common, "_PICKS", {})
    faster = {"BM": 16, "num_warps": 2}
    speed[16] = 0.5
    n_timed = len(timed)
    assert ssd_common.pick(key, [*candidates, faster], timed.append) == faster
    assert len(timed) > n_timed


def test_a_candidate_that_does_not_reproduce_the_first_output_is_not_chosen(gpu_pick, monkeypatch):
    """Tiles of one exact computation must give the first tile's output bit for bit: a racy build
    (its output changes between runs) and a wrong one are passed over even when fastest."""
    out = torch.zeros(64, dtype=torch.bfloat16)
    timed = []

    def run(cand):
        timed.append(cand)
        out.fill_(2.0)
        if cand == "racy":  # right on its first run only
            out[-1] = 2.0 if timed.count("racy") == 1 else 3.0
        elif cand == "wrong":  # the same wrong value every run
            out[0] = 1.0

    speed = {"first": 4.0, "racy": 1.0, "wrong": 1.5, "other": 2.0}
    monkeypatch.setattr(ssd_common, "graph_time", replays_timed_by(speed, timed))
    with pytest.warns(UserWarning, match="does not reproduce the output of the first tile of its kind") as caught:
        chosen = ssd_common.pick(("k",), ["first", "racy", "wrong", "other"], run, output=lambda: out)
    assert chosen == "other"
    assert sorted(str(w.message).split("tile ")[1].split(" ")[0] for w in caught) == ["racy", "wrong"]


def test_only_tiles_of_one_kind_must_agree_bit_for_bit(gpu_pick, monkeypatch):
    """With same_bits, each tile is held to the first tile of its own kind (the state walk: a
    descriptor-fed tile to its pointer twin), and tiles of another kind may round differently."""
    states, final = torch.zeros(8), torch.zeros(2)
    bits = {"a": 1.0, "a-racy": 1.0, "b": 5.0, "b-twin": 5.0}  # kinds a and b round differently
    timed = []

    def run(cand):
        timed.append(cand)
        states.fill_(bits[cand])
        final.fill_(bits[cand])
        if cand == "a-racy" and timed.count(cand) > 1:
            final[0] = 7.0  # only the second tuple member changes: both members are checked

    speed = {"a": 4.0, "a-racy": 1.0, "b": 3.0, "b-twin": 2.0}
    monkeypatch.setattr(ssd_common, "graph_time", replays_timed_by(speed, timed))
    with pytest.warns(UserWarning, match="a-racy") as caught:
        chosen = ssd_common.pick(("walk",), ["a", "b", "a-racy", "b-twin"], run, output=lambda: (states, final),
                                 same_bits=lambda c: c[0])
    assert chosen == "b-twin" and len(caught) == 1


def test_walk_descriptor_tiles_have_a_pointer_twin():
    """The walk's pick checks a descriptor-fed tile against the pointer tile of the same shape,
    timed before it; without one in the list that check would be vacuous."""
    from bamba.kernels.ssd_chunk_state_passing import SEQ_CANDIDATES, SEQ_TMA_CANDIDATES
    for cfg in SEQ_TMA_CANDIDATES:
        assert {k: v for k, v in cfg.items() if k != "TMA"} in SEQ_CANDIDATES, cfg


def test_choices_timed_another_way_are_timed_again(gpu_pick, monkeypatch):
    """A tuning file written when tiles were timed call by call (host time included) keeps keys
    without the timing tag; they are not used, and the choice is timed afresh."""
    candidates, key = ["slow", "fast"], ("chunk_scan", 1)
    timed = []

    def fake_time(fn, **kwargs):
        fn()
        return {"slow": 2.0, "fast": 1.0}[timed[-1]]

    monkeypatch.setattr(ssd_common, "graph_time", fake_time)
    assert ssd_common.pick(key, candidates, timed.append) == "fast"
    path = ssd_common.tuning_file()
    (tagged,) = json.loads(path.read_text())
    tag = f" by {ssd_common.TIMING}"
    assert tagged.endswith(tag)
    # the choice stored under the old key form (no timing tag), pointing at the slower tile
    path.write_text(json.dumps({tagged[:-len(tag)]: "slow"}))
    monkeypatch.setattr(ssd_common, "_PICKS", {})
    n = len(timed)
    assert ssd_common.pick(key, candidates, timed.append) == "fast" and len(timed) > n


def test_interpreter_uses_the_first_candidate_untimed(monkeypatch, tmp_path):
    monkeypatch.setenv("BAMBA_CACHE", str(tmp_path))
    monkeypatch.setattr(ssd_common, "INTERPRET", True)
    assert ssd_common.pick(("k",), ["a", "b"], lambda c: (_ for _ in ()).throw(AssertionError)) == "a"
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a GPU")
def test_timing_leaves_other_threads_free_to_allocate():
    """Timing a tile captures a CUDA graph. Another thread of the process (a data loader, a second
    model) may allocate device memory meanwhile: only the capturing thread is restricted."""
    import threading

    in_capture, allocated, errors = threading.Event(), threading.Event(), []

    def other_thread():
        in_capture.wait(timeout=60)
        try:  # a size no cached block serves, so the allocator asks the driver
            torch.empty(3 * 2 ** 30 + 4099, dtype=torch.uint8, device="cuda")
        except RuntimeError as e:
            errors.append(str(e))
        allocated.set()

    x = torch.zeros(16, device="cuda")

    def fn():
        if torch.cuda.is_current_stream_capturing() and not in_capture.is_set():
            in_capture.set()
            allocated.wait(timeout=60)
        x.add_(1)

    thread = threading.Thread(target=other_thread)
    thread.start()
    ssd_common.graph_time(fn, warmup=1, rep=2)
    thread.join()
    assert in_capture.is_set() and allocated.is_set() and errors == []
