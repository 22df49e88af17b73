"""One-token attention over a KV cache: SDPA against `bamba.kernels.decode_attention` (split over the keys).

Shapes of a Bamba-9B decode step: batch 1, 8 KV heads of 4 query heads each (the query heads as
their KV head's queries, as the model passes them), head size 128, bf16, a bool mask over the
cache with its last slots unwritten. Timing: one call captured in a CUDA graph, replayed by
`triton.testing.do_bench` (median; `ssd_common.graph_time`). Floor: reading the keys and values
once at the copy bandwidth (DESIGN.md §7).

    python benchmarks/decode_attention.py --out runs/decode_attention.json          # H200
    python benchmarks/decode_attention.py --smoke --out /tmp/decode_attention.json   # CPU: checks the script
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

import bamba  # noqa: F401  (on CPU, the Triton interpreter is chosen before triton is imported)
from bamba.kernels.decode_attention import decode_attention
from bamba.kernels.ssd_common import graph_time

COPY_BYTES_PER_S = 4.26e12  # H200, measured for DESIGN.md §7


def gpu_time_us(fn) -> float:
    """Median µs of one call replayed from a CUDA graph."""
    return graph_time(fn, warmup=50, rep=300) * 1e3


def wall_time_us(fn) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="write results as JSON here")
    parser.add_argument("--smoke", action="store_true", help="small shapes on CPU: checks the script")
    parser.add_argument("--lengths", default=None, help="cache lengths (default 1024,4160,16448,65600)")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    kv_heads, rep, head = (2, 4, 32) if args.smoke else (8, 4, 128)
    lengths = [int(s) for s in (args.lengths or ("100,300" if args.smoke else "1024,4160,16448,65600")).split(",")]
    timer = wall_time_us if args.smoke else gpu_time_us
    dtype = torch.float32 if args.smoke else torch.bfloat16
    g = torch.Generator(device).manual_seed(0)
    rows = []
    print(f"{'cache':>7s} {'SDPA µs':>9s} {'split µs':>9s} {'K+V MB':>8s} {'floor µs':>9s} {'of floor':>9s} {'max err':>9s}")
    for s in lengths:
        q = torch.randn(1, kv_heads, rep, head, device=device, dtype=dtype, generator=g)
        k, v = (torch.randn(1, kv_heads, s, head, device=device, dtype=dtype, generator=g) for _ in range(2))
        mask = torch.ones(1, s, dtype=torch.bool, device=device)
        mask[:, s - min(60, s // 2):] = False  # unwritten slots
        sdpa_mask = mask[:, None, None, :]
        want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=sdpa_mask)
        err = (decode_attention(q, k, v, mask).float() - want).abs().max().item()
        sdpa_us = timer(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask))
        split_us = timer(lambda: decode_attention(q, k, v, mask))
        kv_bytes = 2 * k.numel() * k.element_size()
        floor_us = kv_bytes / COPY_BYTES_PER_S * 1e6
        rows.append(dict(cache=s, sdpa_us=sdpa_us, split_us=split_us, kv_bytes=kv_bytes, floor_us=floor_us,
                         max_abs_err=err))
        print(f"{s:7d} {sdpa_us:9.1f} {split_us:9.1f} {kv_bytes / 1e6:8.1f} {floor_us:9.1f} "
              f"{floor_us / split_us:9.2f} {err:9.1e}", flush=True)
    meta = dict(benchmark="decode_attention", smoke=args.smoke,
                device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                versions=dict(torch=torch.__version__, triton=__import__("triton").__version__),
                shape=dict(kv_heads=kv_heads, queries_per_kv_head=rep, head_size=head, dtype=str(dtype)))
    with open(args.out, "w") as f:
        json.dump(dict(meta, rows=rows), f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
