"""One SSD call inside a CUDA profiler range, for Nsight Compute (GPU only).

    ncu --clock-control none --profile-from-start off --set full -o ssd4k \
        python3 benchmarks/profile_ssd.py --length 4096 --strategy optimized

Warm-up calls pick and compile the tiles outside the range, so the profile holds the kernels of
one call. Run benchmarks/ssd.py to the end first on the same machine: its tile choices persist
(bamba.kernels.ssd_common.tuning_file) and this script then uses them. Tiles timed under the
profiler can differ: its interception slows launches unevenly (on an H200 it once picked a
pointer scan tile that runs at 211 µs where the benchmark's choice runs at 133).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import bamba  # noqa: E402
from ssd import Q, make_inputs  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--strategy", default="optimized", choices=[s for s in bamba.STRATEGIES if s != "reference"])
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("profile_ssd.py needs a CUDA GPU")
    inp = make_inputs(args.batch, args.length, seed=0)
    for _ in range(3):
        bamba.ssd(**inp, chunk_size=Q, strategy=args.strategy)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    bamba.ssd(**inp, chunk_size=Q, strategy=args.strategy)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"profiled one {args.strategy} call, B={args.batch} L={args.length}")


if __name__ == "__main__":
    main()
