"""Every Triton strategy against the float64 PyTorch reference (CPU: Triton interpreter)."""
import functools

import pytest
import torch

import bamba
from bamba.ssd import REGISTRY

TRITON = [s for s in bamba.STRATEGIES if s != "reference"]
SHAPES = [  # b, l, h, p, g, n, Q
    (1, 1, 4, 16, 1, 16, 16),      # one token
    (2, 11, 4, 16, 2, 16, 16),     # L < Q, g > 1
    (3, 50, 4, 16, 1, 16, 16),     # several chunks, L not a multiple of Q
    (2, 64, 4, 16, 4, 16, 32),     # exact multiple of Q, g == h
    (1, 37, 2, 24, 1, 20, 16),     # p, n not powers of two (masked tiles)
    (2, 45, 6, 16, 2, 16, 16),     # heads past the last full cumsum head block, 3 per group
]


def expected(kit, strategy, inp, Q, **kw):
    """Ground truth in float64: the reference, chunk by chunk from zero for chunk-local strategies."""
    inp = kit.to64(inp)
    if not REGISTRY[strategy].chunk_local:
        return bamba.ssd(**inp, chunk_size=Q, strategy="reference", **kw)
    l = inp["x"].shape[1]
    ys, state = [], None
    for s in range(0, l, Q):
        part = {k: (v[:, s:s + Q] if k in ("x", "dt", "B", "C") else v) for k, v in inp.items()}
        if s > 0:
            part["initial_state"] = None
        y, state = bamba.ssd(**part, chunk_size=Q, strategy="reference", **kw)
        ys.append(y)
    return torch.cat(ys, dim=1), state


def test_registry():
    assert bamba.STRATEGIES == ("reference", "default", "optimized", "independent")
    assert set(REGISTRY) == set(bamba.STRATEGIES)


@pytest.mark.parametrize("strategy", TRITON)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}l{}h{}p{}g{}n{}Q{}".format(*s))
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "D+bias+init"])
def test_strategy_matches_reference(kit, strategy, shape, extras):
    b, l, h, p, g, n, Q = shape
    inp = kit.make(b, l, h, p, g, n, with_d=extras, with_bias=extras, with_init=extras)
    y, s = bamba.ssd(**inp, chunk_size=Q, strategy=strategy)
    assert y.dtype == inp["x"].dtype and y.shape == inp["x"].shape
    assert s.dtype == torch.float32 and s.shape == (b, h, p, n)
    ye, se = expected(kit, strategy, inp, Q)
    kit.close(y, ye)
    kit.close(s, se)


@pytest.mark.parametrize("strategy", TRITON)
def test_float64_inputs(kit, strategy):
    inp = kit.to64(kit.make(2, 40, 4, 16, 2, 16, with_init=True))
    y, s = bamba.ssd(**inp, chunk_size=16, strategy=strategy)
    assert y.dtype == torch.float64
    ye, se = expected(kit, strategy, inp, 16)
    kit.close(y, ye)
    kit.close(s, se)


@pytest.mark.parametrize("strategy", TRITON)
@pytest.mark.parametrize("dt_shift", [-60.0, 40.0], ids=["tiny_dt", "huge_dt"])
def test_extreme_dt_is_finite(kit, strategy, dt_shift):
    inp = kit.make(2, 40, 4, 16, 1, 16, dt_shift=dt_shift, with_init=True)
    y, s = bamba.ssd(**inp, chunk_size=16, strategy=strategy)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    ye, se = expected(kit, strategy, inp, 16)
    kit.close(y, ye)
    kit.close(s, se)


@pytest.mark.parametrize("strategy", TRITON)
def test_dt_limit_and_no_softplus(kit, strategy):
    inp = kit.make(1, 30, 4, 16, 2, 16)
    inp["dt"] = inp["dt"].abs()
    for kw in (dict(dt_limit=(0.05, 0.4)), dict(dt_softplus=False)):
        y, s = bamba.ssd(**inp, chunk_size=16, strategy=strategy, **kw)
        ye, se = expected(kit, strategy, inp, 16, **kw)
        kit.close(y, ye)
        kit.close(s, se)


@pytest.mark.parametrize("strategy", TRITON)
def test_causal(kit, strategy):
    inp = kit.make(1, 40, 4, 16, 1, 16)
    y, _ = bamba.ssd(**inp, chunk_size=16, strategy=strategy)
    t = 21
    changed = {k: v.clone() if v is not None else None for k, v in inp.items()}
    for k in ("x", "dt", "B", "C"):
        changed[k][:, t + 1:] = torch.randn_like(changed[k][:, t + 1:]) * 3
    y2, _ = bamba.ssd(**changed, chunk_size=16, strategy=strategy)
    torch.testing.assert_close(y2[:, :t + 1], y[:, :t + 1], rtol=0, atol=0)
    assert not torch.allclose(y2[:, t + 1:], y[:, t + 1:])


def test_independent_differs_from_exact_across_chunks(kit):
    inp = kit.make(1, 40, 4, 16, 1, 16, dt_shift=-2.0)   # small dt: long memory
    y_ind, _ = bamba.ssd(**inp, chunk_size=16, strategy="independent")
    y_def, _ = bamba.ssd(**inp, chunk_size=16, strategy="default")
    torch.testing.assert_close(y_ind[:, :16], y_def[:, :16], rtol=1e-4, atol=1e-4)
    assert (y_ind[:, 16:] - y_def[:, 16:]).abs().max() > 1e-2


@pytest.mark.parametrize("strategy", TRITON)
def test_bfloat16(kit, strategy):
    """bf16 operands with fp32 accumulation: close to the fp64 truth at bf16 tolerance."""
    inp = kit.make(2, 40, 4, 16, 1, 16, with_init=True)
    lo = {k: (v.bfloat16() if k in ("x", "B", "C") else v) for k, v in inp.items()}
    y, s = bamba.ssd(**lo, chunk_size=16, strategy=strategy)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    ye, se = expected(kit, strategy, {k: (v.float() if k in ("x", "B", "C") else v) for k, v in lo.items()}, 16)
    kit.close(y, ye, tol=3e-2)
    kit.close(s, se, tol=3e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cb_tiles(kit, dtype):
    """C·Bᵀ per chunk and group against float64, zero above the diagonal, stored in the operand
    dtype for bf16 models (one rounding: within a bf16 step, as the Triton interpreter truncates
    where GPUs round to nearest) and in fp32 otherwise."""
    from bamba.kernels.ssd_bmm import chunk_cb
    from bamba.kernels.ssd_common import prepare
    b, l, h, g, n, Q = 2, 45, 4, 2, 24, 16
    inp = kit.make(b, l, h, 16, g, n)
    B, C = inp["B"].to(dtype), inp["C"].to(dtype)
    pr = prepare(inp["x"].to(dtype), inp["dt"], inp["A"], B, C, Q, None, None, None)
    cb = chunk_cb(pr)
    assert cb.dtype == dtype and cb.shape == (b, pr.nchunks, g, Q, Q)
    pad = pr.nchunks * Q - l
    Bc, Cc = (torch.nn.functional.pad(t.double(), (0, 0, 0, 0, 0, pad)).view(b, pr.nchunks, Q, g, n) for t in (B, C))
    want = torch.einsum("bcign,bcjgn->bcgij", Cc, Bc).tril()
    tol = dict(rtol=2.0 ** -7, atol=1e-5) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cb.double(), want, **tol)


@pytest.mark.parametrize("strategy", TRITON)
def test_autotuned_tile_path(kit, strategy, monkeypatch):
    """Long chunks take the tuned launch path (on CPU: the first candidate); same results."""
    from bamba.kernels import ssd_common
    monkeypatch.setattr(ssd_common, "TUNE_MIN_CHUNK", 64)
    inp = kit.make(1, 150, 2, 16, 1, 16, with_init=True)
    y, s = bamba.ssd(**inp, chunk_size=64, strategy=strategy)
    ye, se = expected(kit, strategy, inp, 64)
    kit.close(y, ye)
    kit.close(s, se)


@pytest.mark.parametrize("strategy,dtype", [("default", torch.float32), ("optimized", torch.bfloat16)])
def test_split_state_plan(kit, strategy, dtype, monkeypatch):
    """The two-launch state plan (chunk states, then state passing) that GPUs may pick by timing."""
    from bamba.kernels import ssd_chunk_state_passing
    monkeypatch.setattr(ssd_chunk_state_passing, "PLANS", ("split",))
    inp = kit.make(2, 40, 4, 16, 1, 16, with_d=True, with_bias=True, with_init=True)
    lo = {k: (v.to(dtype) if k in ("x", "B", "C") else v) for k, v in inp.items()}
    y, s = bamba.ssd(**lo, chunk_size=16, strategy=strategy)
    ye, se = expected(kit, strategy, {k: (v.float() if k in ("x", "B", "C") else v) for k, v in lo.items()}, 16)
    tol = {} if dtype == torch.float32 else dict(tol=3e-2)
    kit.close(y, ye, **tol)
    kit.close(s, se, **tol)


@pytest.mark.parametrize("strategy", TRITON)
@pytest.mark.parametrize("hb,bkn", [(2, 128), (4, 16)])
@pytest.mark.parametrize("shape", [(2, 50, 8, 16, 2, 16, 16), (1, 37, 4, 24, 1, 20, 16)],
                         ids=["b2l50h8g2", "b1l37h4g1"])
def test_multi_head_scan(kit, strategy, hb, bkn, shape, monkeypatch):
    """The chunk-scan variants a GPU may pick by timing: several heads of a group per program,
    a state-dim block smaller than n (several inter-chunk steps)."""
    from bamba.kernels import ssd_chunk_scan
    monkeypatch.setattr(ssd_chunk_scan, "SCAN_CFG", {**ssd_chunk_scan.SCAN_CFG, "HB": hb, "BKN": bkn})
    b, l, h, p, g, n, Q = shape
    inp = kit.make(b, l, h, p, g, n, with_d=True, with_bias=True, with_init=True)
    y, s = bamba.ssd(**inp, chunk_size=Q, strategy=strategy)
    ye, se = expected(kit, strategy, inp, Q)
    kit.close(y, ye)
    kit.close(s, se)


@pytest.mark.parametrize("strategy", TRITON)
@pytest.mark.parametrize("tile", [dict(HB=1), dict(HB=2), dict(TMA=True, LS=2), dict(TMA=True, LS=2, HB=2)],
                         ids=["plain", "HB2", "tma", "tma-HB2"])
@pytest.mark.parametrize("dt_kw", [dict(), dict(dt_softplus=False)], ids=["softplus", "signed_dt"])
def test_scan_row_blocks(kit, strategy, tile, dt_kw, monkeypatch):
    """Several row blocks per chunk, as the tuned tiles on GPUs have at Q = 256 (the other tests'
    chunks fit in one row block): key blocks wholly below the diagonal and on it, decays of either
    sign of dt, a last chunk cut short, b > 1, g > 1, D, bias and an initial state."""
    from bamba.kernels import ssd_chunk_scan
    monkeypatch.setattr(ssd_chunk_scan, "SCAN_CFG", {**ssd_chunk_scan.SCAN_CFG, "BM": 16, "BK": 16, "BKN": 16,
                                                     **tile})
    inp = kit.make(2, 150, 4, 16, 2, 16, with_init=True)
    if dt_kw:
        assert (inp["dt"] + inp["dt_bias"] < 0).any()  # dt·A changes sign within chunks
    y, s = bamba.ssd(**inp, chunk_size=64, strategy=strategy, **dt_kw)
    ye, se = expected(kit, strategy, inp, 64, **dt_kw)
    kit.close(y, ye)
    kit.close(s, se)


@pytest.mark.parametrize("strategy", TRITON)
@pytest.mark.parametrize("tile", [dict(HB=1), dict(TMA=True, LS=2), dict(TMA=True, LS=2, HB=2)],
                         ids=["plain", "tma", "tma-HB2"])
def test_scan_reads_no_stale_cb(kit, strategy, tile, monkeypatch):
    """The chunk scan has no causal mask: it relies on C·Bᵀ being zero above the diagonal,
    also in tiles wholly above it, which a row block taller than the C·Bᵀ tiles reads. The
    scratch starts as NaN here, so any entry the producer leaves unwritten shows."""
    from bamba.kernels import ssd_chunk_scan, ssd_common

    def nan_cb(pr):
        return torch.full((pr.b, pr.nchunks, pr.g, pr.chunk, pr.chunk), float("nan"), device=pr.x.device)

    monkeypatch.setattr(ssd_common, "cb_scratch", nan_cb)
    monkeypatch.setattr(ssd_chunk_scan, "cb_scratch", nan_cb)
    monkeypatch.setattr(ssd_common, "TUNE_MIN_CHUNK", 512)  # the tile below, not a tuned one
    monkeypatch.setattr(ssd_chunk_scan, "SCAN_CFG", {**ssd_chunk_scan.SCAN_CFG, "BM": 128, "BK": 32, "BKN": 16,
                                                     **tile})
    inp = kit.make(1, 300, 2, 16, 1, 16, with_init=True)  # two chunks of 256, the last cut short
    y, s = bamba.ssd(**inp, chunk_size=256, strategy=strategy)
    ye, se = expected(kit, strategy, inp, 256)
    kit.close(y, ye)
    kit.close(s, se)


class _LaunchCount:
    """Stands in for a jitted kernel and counts its launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@pytest.mark.parametrize("strategy", TRITON)
@pytest.mark.parametrize("shape", [(2, 50, 8, 16, 2, 16, 16), (1, 37, 4, 24, 1, 32, 16), (3, 70, 2, 16, 1, 16, 32)],
                         ids=["b2l50h8g2", "b1l37p24n32", "b3l70Q32"])
@pytest.mark.parametrize("hb", [1, 2])
def test_tma_scan(kit, strategy, shape, hb, monkeypatch):
    """The descriptor-fed chunk scan a GPU may pick by timing: several key and state blocks, a
    last chunk cut short (rows past the sequence end come back as zeros), p below the tile, and
    two heads of a group per program."""
    from bamba.kernels import ssd_chunk_scan
    counter = _LaunchCount(ssd_chunk_scan._chunk_scan_tma_kernel)
    monkeypatch.setattr(ssd_chunk_scan, "_chunk_scan_tma_kernel", counter)
    b, l, h, p, g, n, Q = shape
    monkeypatch.setattr(ssd_chunk_scan, "SCAN_CFG", {**ssd_chunk_scan.SCAN_CFG, "BK": 16, "BKN": 16, "TMA": True,
                                                     "LS": 2, "HB": hb})
    inp = kit.make(b, l, h, p, g, n, with_d=True, with_bias=True, with_init=True)
    y, s = bamba.ssd(**inp, chunk_size=Q, strategy=strategy)
    assert counter.launches == 1
    ye, se = expected(kit, strategy, inp, Q)
    kit.close(y, ye)
    kit.close(s, se)


@pytest.mark.parametrize("strategy", TRITON)
@pytest.mark.parametrize("shape,block", [((2, 50, 8, 16, 2, 16, 16), dict(BP=16, BN=16)),
                                         ((1, 37, 4, 24, 1, 32, 16), dict(BP=16, BN=16)),
                                         ((1, 37, 4, 24, 1, 32, 16), dict(BP=32, BN=16)),
                                         ((3, 70, 2, 16, 1, 16, 32), dict(BP=16, BN=16))],
                         ids=["b2l50h8g2", "b1l37p24n32", "b1l37p24n32-BP32", "b3l70Q32"])
def test_tma_state_walk(kit, strategy, shape, block, monkeypatch):
    """The descriptor-fed state walk a GPU may pick by timing: several chunks, a last chunk cut
    short (rows past the sequence end come back as zeros), state blocks of p and n, a p-block
    wider than p (p = 24: the tile's extra rows read the next head's x and are never stored),
    g > 1 and an initial state."""
    from bamba.kernels import ssd_chunk_state_passing, ssd_common
    descriptors = []
    monkeypatch.setattr(ssd_chunk_state_passing, "packed_rows",
                        lambda t, blk: descriptors.append(blk) or ssd_common.packed_rows(t, blk))
    monkeypatch.setattr(ssd_chunk_state_passing, "SEQ_CFG", {**ssd_chunk_state_passing.SEQ_CFG, **block, "TMA": True})
    monkeypatch.setattr(ssd_chunk_state_passing, "PLANS", ("seq",))
    b, l, h, p, g, n, Q = shape
    inp = kit.make(b, l, h, p, g, n, with_d=True, with_bias=True, with_init=True)
    y, s = bamba.ssd(**inp, chunk_size=Q, strategy=strategy)
    assert descriptors  # x and B came through descriptors
    ye, se = expected(kit, strategy, inp, Q)
    kit.close(y, ye)
    kit.close(s, se)


def _under_load():
    """The `optimized` walk's inputs, scratch and options at Bamba-9B dims and 8 × 16k tokens, bf16."""
    from bamba.kernels.ssd_common import fused_scratch, prepare
    b, l, h, p, g, n, Q = 8, 16384, 128, 64, 1, 128, 256
    gen = torch.Generator(device="cuda").manual_seed(0)
    x, dt = (torch.randn(b, l, h, *d, device="cuda", generator=gen).bfloat16() for d in ((p,), ()))
    B, C = (torch.randn(b, l, g, n, device="cuda", generator=gen).bfloat16() for _ in range(2))
    A = -torch.rand(h, device="cuda", generator=gen) * 4
    pr = prepare(x, dt, A, B, C, Q, torch.ones(h, device="cuda"), None, None)
    return pr, fused_scratch(pr), dict(dt=(True, (0.0, float("inf"))), out_dtype=torch.bfloat16, exp2=True)


UNDER_LOAD = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 24e9,
    reason="tiles at 8 × 16k tokens on a GPU")


@UNDER_LOAD
def test_walk_tiles_agree_under_load():
    """The descriptor-fed state walk under load: each run equals the pointer walk of the same
    tile bit for bit (same products, same order), as a descriptor-fed scan build once did not."""
    from bamba.kernels import ssd_chunk_state_passing as walk
    pr, (dt_proc, cs, cb), kw = _under_load()
    for cfg in walk.SEQ_TMA_CANDIDATES:
        want = walk.chunk_state_passing(pr, dt_proc, cs, cb, cfg={**cfg, "TMA": False}, **kw)
        for _ in range(3):
            got = walk.chunk_state_passing(pr, dt_proc, cs, cb, cfg=cfg, **kw)
            assert all(torch.equal(u, v) for u, v in zip(got, want)), cfg


@UNDER_LOAD
def test_scan_tiles_agree_under_load():
    """Every tile the timed pick may choose, under load (where a register-capped build once gave
    outputs that changed from run to run): each run equals the pointer kernel's output bit for
    bit (same products, same order of accumulation)."""
    from bamba.kernels import ssd_chunk_scan
    from bamba.kernels.ssd_chunk_state_passing import chunk_state_passing
    pr, (dt_proc, cs, cb), kw = _under_load()
    prev, _ = chunk_state_passing(pr, dt_proc, cs, cb, **kw)
    scan = functools.partial(ssd_chunk_scan.chunk_scan, pr, cb, dt_proc, cs, prev, ssd_chunk_scan.PREV_PER_CHUNK,
                             exp2=True)
    want = scan(cfg=ssd_chunk_scan.SCAN_CFG)
    for cfg in ssd_chunk_scan.SCAN_CANDIDATES + ssd_chunk_scan.TMA_CANDIDATES:
        for _ in range(3):
            assert torch.equal(scan(cfg=cfg), want), cfg


def test_tma_scan_falls_back_where_descriptors_cannot_read(kit, monkeypatch):
    """Views TMA cannot address (a base off 16 bytes, heads not packed in a row, n not a power of
    two, a batch broadcast with stride 0, a head's row narrower than 16 bytes) run the pointer
    kernels instead (scan and state walk), with the same results."""
    from bamba.kernels import ssd_chunk_scan, ssd_chunk_state_passing
    from bamba.kernels.ssd_common import packed_views_ok, prepare
    counter = _LaunchCount(ssd_chunk_scan._chunk_scan_tma_kernel)
    monkeypatch.setattr(ssd_chunk_scan, "_chunk_scan_tma_kernel", counter)
    monkeypatch.setattr(ssd_chunk_scan, "SCAN_CFG", {**ssd_chunk_scan.SCAN_CFG, "TMA": True, "LS": 2})
    walk_descriptors = []
    monkeypatch.setattr(ssd_chunk_state_passing, "packed_rows", lambda t, blk: walk_descriptors.append(blk))
    monkeypatch.setattr(ssd_chunk_state_passing, "SEQ_CFG", {**ssd_chunk_state_passing.SEQ_CFG, "TMA": True})
    inp = kit.make(2, 40, 4, 16, 1, 16, with_d=True)
    ok = prepare(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], 16, inp["D"], None, None)
    assert packed_views_ok(ok)
    wide = torch.empty(2, 40, 4, 17, dtype=inp["x"].dtype, device=inp["x"].device)
    shifted = dict(inp, x=wide[..., 1:].copy_(inp["x"]))  # same values, base 4 bytes off
    unpacked = dict(inp, x=inp["x"].transpose(1, 2).contiguous().transpose(1, 2))  # (b, h, l, p) storage
    odd_n = kit.make(2, 40, 4, 16, 1, 20, with_d=True)
    broadcast = dict(inp, x=inp["x"][:1].expand(2, -1, -1, -1))  # batch stride 0
    narrow = kit.make(2, 40, 4, 2, 1, 16, with_d=True)  # a head's x row: 8 bytes
    for case in (shifted, unpacked, odd_n, broadcast, narrow):
        pr = prepare(case["x"], case["dt"], case["A"], case["B"], case["C"], 16, case["D"], None, None)
        assert not packed_views_ok(pr)
        y, s = bamba.ssd(**case, chunk_size=16, strategy="optimized")
        ye, se = expected(kit, "optimized", case, 16)
        kit.close(y, ye)
        kit.close(s, se)
    assert counter.launches == 0 and not walk_descriptors
