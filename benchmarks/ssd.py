"""SSD scan benchmark (GPU only): every strategy and transformers' pure-PyTorch scan.

Bamba-9B SSD dims (h=128, p=64, g=1, n=128, Q=256), bf16 x/B/C/dt, fp32 A/D/dt_bias.
Times are triton.testing.do_bench medians (L2 flushed between runs) on fresh random inputs:
"µs" of calls made one by one (what a caller waits, host work included), "GPU µs" of one call
replayed from a CUDA graph (the Triton strategies; the GPU's own time). Where "µs" is well above
"GPU µs" the row is bound by the host, not by the kernels.
Bytes that must move: read x, dt, B, C; write y and the fp32 final state. The floor is
max(bytes / measured copy bandwidth, FLOPs / measured bf16 matmul rate), FLOPs counted for the
chunked algorithm (causal halves of C·Bᵀ and the intra-chunk product, chunk states, Y_off).
Scratch = peak allocated during one call minus what was allocated before it minus its outputs.

    python benchmarks/ssd.py --out ssd.json [--batches 1 8] [--lengths 1024 4096 8192 16384]
                              [--breakdown] [--sweep] [--skip-table]
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys

from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

H, P, G, N, Q = 128, 64, 1, 128, 256


def bench(fn):
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3  # µs


def copy_bandwidth():
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    us = bench(lambda: dst.copy_(src))
    del src, dst
    return 2 * n / (us * 1e-6)


def matmul_rate():
    m = 8192
    a = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    us = bench(lambda: a @ b)
    return 2 * m ** 3 / (us * 1e-6)


def make_inputs(b, l, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s, dt=torch.bfloat16: torch.randn(*s, generator=gen, device="cuda", dtype=torch.float32).to(dt)  # noqa: E731
    return dict(x=r(b, l, H, P), dt=r(b, l, H) - 2.0, A=-torch.rand(H, generator=gen, device="cuda") * 4 - 0.5,
                B=r(b, l, G, N), C=r(b, l, G, N), D=r(H, dt=torch.float32), dt_bias=r(H, dt=torch.float32))


def moved_bytes(inp):
    b, l = inp["x"].shape[:2]
    read = sum(inp[k].numel() * inp[k].element_size() for k in ("x", "dt", "B", "C"))
    return read + inp["x"].numel() * inp["x"].element_size() + b * H * P * N * 4


def flops(b, l):
    nc = math.ceil(l / Q)
    per_chunk = G * Q * Q * N + H * Q * Q * P + 2 * H * Q * P * N + 2 * H * Q * P * N
    return b * nc * per_chunk


def hf_scan():
    """transformers' pure-PyTorch chunked scan (the undecorated torch path), or None."""
    try:
        from transformers.models.bamba import modeling_bamba as mb
    except Exception:
        return None, "transformers not importable"
    fn = getattr(mb, "mamba2_chunk_scan", None)
    if fn is None:
        return hf_mixer(mb)
    fn = getattr(fn, "__wrapped__", fn)   # the torch fallback, never mamba_ssm / hub kernels

    def run(x, dt, A, B, C, D, dt_bias):
        return fn(x, dt, A, B, C, Q, D=D, dt_bias=dt_bias, dt_softplus=True, return_final_states=True)
    return run, "transformers.models.bamba.modeling_bamba.mamba2_chunk_scan.__wrapped__"


def hf_mixer(mb):
    """Older transformers: BambaMixer.torch_forward (whole mixer: in_proj, conv, scan, norm, out_proj)."""
    try:
        cfg = mb.BambaConfig(hidden_size=4096, mamba_n_heads=H, mamba_d_head=P, mamba_n_groups=G,
                             mamba_d_state=N, mamba_chunk_size=Q, mamba_expand=2, num_hidden_layers=1,
                             attn_layer_indices=[])
        mixer = mb.BambaMixer(cfg, layer_idx=0).to("cuda", torch.bfloat16)
    except Exception as e:  # noqa: BLE001
        return None, f"no standalone scan and BambaMixer failed: {e!r}"[:200]

    def run(x, dt, A, B, C, D, dt_bias):
        hs = torch.randn(x.shape[0], x.shape[1], 4096, device="cuda", dtype=torch.bfloat16)
        return mixer.torch_forward(hs)
    return run, "BambaMixer.torch_forward (whole mixer incl. projections; upper bound for the scan)"


def measure(fn):
    fn()  # compile / autotune first: their buffers are not the kernel's scratch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    outs = out if isinstance(out, (tuple, list)) else (out,)
    out_bytes = sum(o.numel() * o.element_size() for o in outs if isinstance(o, torch.Tensor))
    del out, outs
    scratch = peak - base - out_bytes
    us = bench(fn)
    return us, scratch


def host_us(fn, n=20):
    """Host (Python + launch) time per call: the GPU is kept busy so only enqueueing is timed."""
    import time
    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)   # ~0.1 s of GPU work queued ahead of the calls
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def graph_us(fn):
    """GPU time of one call replayed from a CUDA graph (no host overhead); also proves capture works."""
    from bamba.kernels.ssd_common import graph_time
    return graph_time(fn, warmup=25, rep=100) * 1e3


def err_cell(row):
    """The rel-err column: measured only where the fp32 reference fits (batch 1)."""
    err = row.get("rel_err_vs_reference")
    return "-" if err is None else f"{err:.1e}"


def breakdown(results):
    """GPU time (CUDA-graph replay) of each stage of `default` and `optimized` and of whole calls,
    and the host time per call."""
    from bamba.kernels import ssd_bmm, ssd_chunk_cumsum, ssd_chunk_scan, ssd_chunk_state, ssd_state_passing
    from bamba.kernels.ssd_chunk_state_passing import chunk_state_passing
    from bamba.kernels.ssd_common import prepare
    import bamba
    lim = (0.0, float("inf"))
    out = []
    for b, L in ((1, 1024), (1, 4096), (1, 16384), (8, 16384)):
        inp = make_inputs(b, L, seed=11)
        pr = prepare(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], Q, inp["D"], inp["dt_bias"], None)
        dtp, cs = ssd_chunk_cumsum.chunk_cumsum(pr, True, lim)
        cb = ssd_bmm.chunk_cb(pr)
        st = ssd_chunk_state.chunk_state(pr, dtp, cs)
        prev, _ = ssd_state_passing.state_passing(pr, st.clone(), cs)
        cb2 = torch.empty_like(cb)
        st2 = ssd_chunk_state.chunk_state(pr, dtp, cs, fused=(True, lim, cb2), exp2=True)
        prev2, _ = ssd_state_passing.state_passing(pr, st2, cs, out_dtype=torch.bfloat16, exp2=True)
        stages = {
            "default.chunk_cumsum": lambda: ssd_chunk_cumsum.chunk_cumsum(pr, True, lim),
            "default.bmm_cb": lambda: ssd_bmm.chunk_cb(pr),
            "default.chunk_state": lambda: ssd_chunk_state.chunk_state(pr, dtp, cs),
            "default.state_passing": lambda: ssd_state_passing.state_passing(pr, st, cs),
            "default.chunk_scan": lambda: ssd_chunk_scan.chunk_scan(pr, cb, dtp, cs, prev, ssd_chunk_scan.PREV_PER_CHUNK),
            "optimized.fused_state": lambda: ssd_chunk_state.chunk_state(pr, dtp, cs, fused=(True, lim, cb2), exp2=True),
            "optimized.state_passing": lambda: ssd_state_passing.state_passing(pr, st2, cs, out_dtype=torch.bfloat16, exp2=True),
            "optimized.chunk_scan": lambda: ssd_chunk_scan.chunk_scan(pr, cb2, dtp, cs, prev2, ssd_chunk_scan.PREV_PER_CHUNK, exp2=True),
            # the single sequential launch (chunk states + state passing), as default / optimized call it
            "default.state_seq": lambda: chunk_state_passing(pr, dtp, cs, cb2),
            "optimized.state_seq": lambda: chunk_state_passing(pr, dtp, cs, cb2, dt=(True, lim),
                                                               out_dtype=torch.bfloat16, exp2=True),
        }
        for name, fn in stages.items():
            try:
                out.append(dict(batch=b, length=L, what=name, us=graph_us(fn)))
            except Exception as e:  # noqa: BLE001
                out.append(dict(batch=b, length=L, what=name, error=repr(e)[:200]))
        for strat in ("default", "optimized", "independent"):
            fn = lambda: bamba.ssd(**inp, chunk_size=Q, strategy=strat)  # noqa: E731
            for what, f in (("host_us", host_us), ("graph_us", graph_us)):
                try:
                    out.append(dict(batch=b, length=L, what=f"{strat}.{what}", us=f(fn)))
                except Exception as e:  # noqa: BLE001
                    out.append(dict(batch=b, length=L, what=f"{strat}.{what}", error=repr(e)[:200]))
        for r in out[-16:]:
            print(f"breakdown B={b} L={L:6d} {r['what']:28s} " + (f"{r['us']:9.1f} µs" if "us" in r else r["error"]))
        del inp, pr, dtp, cs, cb, st, prev, cb2, st2, prev2, stages
        torch.cuda.empty_cache()
    results["breakdown"] = out


def sweep(results):
    """Tile sweep for the two heavy kernels (chunk state fused as in `optimized`, chunk scan)."""
    from bamba.kernels.ssd_chunk_scan import PREV_PER_CHUNK, SCAN_CANDIDATES, TMA_CANDIDATES, chunk_scan
    from bamba.kernels.ssd_chunk_state import chunk_state
    from bamba.kernels.ssd_common import prepare
    from bamba.kernels.ssd_state_passing import state_passing
    out = []
    for L in (4096, 16384):
        inp = make_inputs(1, L, seed=7)
        pr = prepare(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], Q, inp["D"], inp["dt_bias"], None)
        dtp = torch.empty(1, H, pr.nchunks, Q, device="cuda")
        cs = torch.empty_like(dtp)
        cb = torch.empty(1, pr.nchunks, G, Q, Q, device="cuda")
        fused = (True, (0.0, float("inf")), cb)
        states = chunk_state(pr, dtp, cs, fused=fused, exp2=True)
        prev, _ = state_passing(pr, states, cs, out_dtype=torch.bfloat16, exp2=True)
        for bp, bn, bk in ((64, 128, 64), (64, 64, 64), (64, 128, 32), (32, 128, 64), (64, 64, 128)):
            for w, s in ((4, 2), (4, 3), (8, 2), (8, 3)):
                cfg = dict(BP=bp, BN=bn, BK=bk, num_warps=w, num_stages=s)
                try:
                    us = bench(lambda: chunk_state(pr, dtp, cs, fused=fused, exp2=True, cfg=cfg))
                except Exception as e:  # noqa: BLE001
                    us = f"error: {type(e).__name__}"
                out.append(dict(kernel="chunk_state_fused", L=L, cfg=cfg, us=us))
        for cfg in SCAN_CANDIDATES + TMA_CANDIDATES:  # incl. multi-head (HB), state-block (BKN), TMA tiles
            try:
                us = bench(lambda: chunk_scan(pr, cb, dtp, cs, prev, PREV_PER_CHUNK, exp2=True, cfg=cfg))
            except Exception as e:  # noqa: BLE001
                us = f"error: {type(e).__name__}"
            out.append(dict(kernel="chunk_scan", L=L, cfg=cfg, us=us))
        del pr, dtp, cs, cb, states, prev, inp
        torch.cuda.empty_cache()
    for k in ("chunk_state_fused", "chunk_scan"):
        for L in (4096, 16384):
            rows = sorted((r for r in out if r["kernel"] == k and r["L"] == L and isinstance(r["us"], float)),
                          key=lambda r: r["us"])
            for r in rows[:3]:
                print(f"sweep {k:18s} L={L:6d} {r['us']:9.1f} µs {r['cfg']}")
    results["sweep"] = out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON results path")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    ap.add_argument("--hf-max-tokens", type=int, default=4096,
                    help="skip transformers' scan above batch*length tokens (67 GB scratch at 4k)")
    ap.add_argument("--sweep", action="store_true", help="also sweep tile configs of the heavy kernels")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time each kernel, the host overhead and CUDA-graph replays")
    ap.add_argument("--skip-table", action="store_true", help="only the extras (--breakdown/--sweep)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/ssd.py needs a CUDA GPU")
    import triton

    import bamba
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                dims=dict(h=H, p=P, g=G, n=N, chunk_size=Q, dtype="bfloat16"))
    try:
        import transformers
        meta["transformers"] = transformers.__version__
    except Exception:  # noqa: BLE001
        pass
    bw, mm = copy_bandwidth(), matmul_rate()
    meta.update(copy_bandwidth_GBps=bw / 1e9, bf16_matmul_TFLOPs=mm / 1e12)
    print(f"# {meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}  "
          f"copy {bw / 1e12:.2f} TB/s  bf16 matmul {mm / 1e12:.0f} TFLOP/s")
    hf, hf_note = hf_scan()
    meta["hf_scan"] = hf_note
    rows = []
    results = dict(meta=meta, scan=rows)

    from bamba.kernels.ssd_common import _PICKS   # what the one-time tuning chose (index into candidates)

    def dump():  # after every group, so a run cut short still leaves its numbers and tile choices
        results["picks"] = {repr(k): v for k, v in _PICKS.items()}
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    hdr = (f"{'strategy':12s} {'B':>2s} {'L':>6s} {'µs':>10s} {'GPU µs':>8s} {'GB/s':>8s} {'floor µs':>9s} "
           f"{'of floor':>8s} {'scratch MB':>11s} {'rel err':>8s}")
    print(hdr)
    for b in ([] if args.skip_table else args.batches):
        for L in args.lengths:
            inp = make_inputs(b, L, seed=1000 * b + L)
            nbytes, nflops = moved_bytes(inp), flops(b, L)
            floor_us = max(nbytes / bw, nflops / mm) * 1e6
            names = list(bamba.STRATEGIES) + ["hf_torch"]
            y_ref = bamba.ssd(**inp, chunk_size=Q, strategy="reference")[0].float() if b == 1 else None
            for name in names:
                row = dict(strategy=name, batch=b, length=L, bytes=nbytes, flops=nflops, floor_us=floor_us)
                if name == "hf_torch":
                    if hf is None:
                        row["note"] = f"skipped: {hf_note}"
                    elif b * L > args.hf_max_tokens:
                        row["note"] = f"skipped: batch*length > {args.hf_max_tokens} (scratch grows past GPU memory)"
                    else:
                        fn = lambda: hf(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"], inp["dt_bias"])  # noqa: E731
                else:
                    fn = lambda: bamba.ssd(**inp, chunk_size=Q, strategy=name)  # noqa: E731
                if "note" not in row:
                    try:
                        us, scratch = measure(fn)
                        row.update(us=us, GBps=nbytes / (us * 1e-6) / 1e9, of_floor=floor_us / us,
                                   scratch_MB=scratch / 1e6, TFLOPs=nflops / (us * 1e-6) / 1e12)
                        if name in bamba.STRATEGIES and name != "reference":
                            row["graph_us"] = graph_us(fn)
                        if y_ref is not None:  # sanity: max error relative to max |y|, vs reference
                            out = fn()
                            y = (out[0] if isinstance(out, tuple) else out).float()
                            sl = slice(0, Q) if name == "independent" else slice(None)
                            row["rel_err_vs_reference"] = ((y[:, sl] - y_ref[:, sl]).abs().max()
                                                           / y_ref[:, sl].abs().max()).item()
                            del out, y
                    except torch.OutOfMemoryError:
                        row["note"] = "out of memory"
                        torch.cuda.empty_cache()
                    except Exception as e:  # noqa: BLE001  (record and go on: one failure must not lose the table)
                        row["note"] = f"error: {e!r}"[:300]
                        torch.cuda.empty_cache()
                rows.append(row)
                if "us" in row:
                    gpu = f"{row['graph_us']:8.1f}" if "graph_us" in row else f"{'-':>8s}"
                    print(f"{name:12s} {b:2d} {L:6d} {row['us']:10.1f} {gpu} {row['GBps']:8.0f} {floor_us:9.1f} "
                          f"{row['of_floor']:8.3f} {row['scratch_MB']:11.1f} {err_cell(row):>8s}")
                else:
                    print(f"{name:12s} {b:2d} {L:6d} {row['note']}")
            del inp, y_ref
            torch.cuda.empty_cache()
            dump()
    # one-token decode step, batch 1
    gen = torch.Generator(device="cuda").manual_seed(5)
    state = torch.randn(1, H, P, N, generator=gen, device="cuda")
    x = torch.randn(1, H, P, generator=gen, device="cuda").bfloat16()
    dt = torch.randn(1, H, generator=gen, device="cuda").bfloat16()
    Bs = torch.randn(1, G, N, generator=gen, device="cuda").bfloat16()
    Cs = torch.randn(1, G, N, generator=gen, device="cuda").bfloat16()
    A = -torch.rand(H, generator=gen, device="cuda") - 0.5
    D = torch.randn(H, generator=gen, device="cuda")
    step_rows = []
    step_bytes = 2 * state.numel() * 4 + 2 * x.numel() * 2 + dt.numel() * 2 + 2 * Bs.numel() * 2
    for name in bamba.STRATEGIES:
        kw = dict(chunk_size=Q, position=5) if name == "independent" else {}
        us = bench(lambda: bamba.ssd_step(state, x, dt, A, Bs, Cs, D=D, dt_bias=D, strategy=name, **kw))
        step_rows.append(dict(strategy=name, batch=1, us=us, bytes=step_bytes,
                              of_floor=step_bytes / bw * 1e6 / us))
        print(f"ssd_step {name:12s} B=1 {us:8.1f} µs  (floor {step_bytes / bw * 1e6:.2f} µs)")
    results["step"] = step_rows
    for k, v in _PICKS.items():
        print(f"pick {k!r}: {v}")
    for flag, extra in ((args.breakdown, breakdown), (args.sweep, sweep)):
        if not flag:
            continue
        try:
            extra(results)
        except Exception as e:  # noqa: BLE001  (a failed extra must not lose the table)
            import traceback
            traceback.print_exc()
            results[f"{extra.__name__}_error"] = repr(e)
    dump()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
