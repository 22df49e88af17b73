#!/usr/bin/env bash
# Everything the GPU numbers in docs/benchmarks.md come from, on a node with 2+ GPUs.
# Usage: benchmarks/run_all.sh OUT_DIR [PART...]   parts: distributed, main, model (default: all)
#   distributed  generate/score speed-up over the node's GPUs (needs every GPU)
#   main         on GPU 1 the scorer benchmark while GPU 0 runs the test suite and the SSD benchmark
#   model        the 4-layer model at Bamba-9B dims, one-token attention, the decode-step ablation; GPU 0
# Logs and JSON land in OUT_DIR; each step's tail is printed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:?usage: benchmarks/run_all.sh OUT_DIR [distributed|main|model ...]}
shift
parts=${*:-distributed main model}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep the log, show its tail
    local name=$1 limit=$2; shift 2
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit $? (limit ${limit}s)"; grep -v -e 'it/s' -e 'output/s' "$out/$name.log" | tail -n 30
}

for part in $parts; do
    case $part in
    distributed)
        step distributed 140 python3 benchmarks/distributed.py --gpus 2 --prompts 16 --out "$out/distributed.json" ;;
    main)
        CUDA_VISIBLE_DEVICES=1 timeout 300 python3 benchmarks/scoring.py --pairs 256 --out "$out/scoring.json" \
            >"$out/scoring.log" 2>&1 &
        scoring=$!
        CUDA_VISIBLE_DEVICES=0 step tests 240 bash tests/run_gpu_checks.sh
        CUDA_VISIBLE_DEVICES=0 step ssd 300 python3 benchmarks/ssd.py --batches 1 8 --out "$out/ssd.json"
        wait $scoring; echo "== scoring: exit $?"; tail -n 25 "$out/scoring.log" ;;
    model)
        CUDA_VISIBLE_DEVICES=0 step model 240 python3 benchmarks/model.py --no-transformers --out "$out/model.json"
        CUDA_VISIBLE_DEVICES=0 step decode_attention 60 python3 benchmarks/decode_attention.py \
            --out "$out/decode_attention.json"
        CUDA_VISIBLE_DEVICES=0 step decode_step 300 python3 benchmarks/decode_step.py --layers 32 --lengths 1024,4096 \
            --out "$out/decode_step.json" ;;
    *) echo "unknown part: $part" >&2; exit 2 ;;
    esac
done
