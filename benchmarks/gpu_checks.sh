#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run (a lent GPU is held by the minute): the
# CUDA tests, the engine benchmarks on the GPU, and WSInfer vs ours on the GPU.
#
#   benchmarks/gpu_checks.sh OUT_DIR [STEP ...]
#
# Steps: tests engine reads peers peers-inception (default: all), and on request the
# large-slide steps reads-large and peers-inception-large (a 36,864² px slide: ≈10k
# Inception patches, minutes to write), and gpu-json (benchmarks/results/gpu.json: a
# 49,152² px slide end to end on device tiles, engines vs models, and the Inception ratio
# of peers-inception-large's log; run it after that step). Each step's log goes to
# OUT_DIR/STEP.log. PYTHON names our interpreter (default python3), WSINFER_PYTHON
# WSInfer's (default .bench/peers/bin/python); STEP_LIMIT caps each step in seconds.
#
# Install carried wheels the way pip normally does, with byte-code (no --no-compile):
# without it every process of both tools spends ≈10 s of a ≈30 s run compiling modules,
# which no user's install does.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_checks.sh OUT_DIR [STEP ...]}
shift
steps=${*:-tests engine reads peers peers-inception}
py=${PYTHON:-python3}
wsinfer=${WSINFER_PYTHON:-.bench/peers/bin/python}
limit=${STEP_LIMIT:-600}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
echo "$(nproc) CPU cores" | tee -a "$out/gpu.txt"

run() {  # run NAME COMMAND...: time-limited, logged, never stops the other steps
    local name=$1 started=$SECONDS
    shift
    echo "== $name: $*" | tee -a "$out/$name.log"
    timeout "$limit" "$@" 2>&1 | tee -a "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s" | tee -a "$out/$name.log"
}

for step in $steps; do
    case $step in
    tests)
        run tests "$py" -m pytest -q -p no:cacheprovider -o filterwarnings= tests/test_cuda.py tests/test_device_tiles.py
        ;;
    engine)
        run engine "$py" benchmarks/bench_classify.py --devices cuda --speed-only \
            --architecture small_cnn --size 96 --stride 96 --batch 256
        run engine "$py" benchmarks/bench_classify.py --devices cuda --speed-only --batch 64
        run engine "$py" benchmarks/bench_segment.py --devices cuda --batch 16
        run engine "$py" benchmarks/bench_detect.py --devices cuda --batch 8 \
            --backbones mobilenet_v3 resnet50_v2
        ;;
    reads)
        run reads "$py" benchmarks/bench_patch_reads.py --threads 1 2 4 8 15
        ;;
    reads-large)
        run reads-large "$py" benchmarks/bench_patch_reads.py --size 4096 --copies 6 \
            --patch 299 --batch 64 --threads 4 8 15
        ;;
    peers)
        run peers "$py" benchmarks/bench_vs_peers.py --device cuda --size 12288 --batch 256 \
            --wsinfer-python "$wsinfer" --tiatoolbox-python /nonexistent
        ;;
    peers-inception)
        run peers-inception "$py" benchmarks/bench_vs_peers.py --device cuda --size 12288 \
            --architecture inception_v3 --patch 299 --batch 64 \
            --wsinfer-python "$wsinfer" --tiatoolbox-python /nonexistent
        ;;
    peers-inception-large)
        run peers-inception-large "$py" benchmarks/bench_vs_peers.py --device cuda \
            --size 6144 --copies 6 --architecture inception_v3 --patch 299 --batch 64 \
            --wsinfer-python "$wsinfer" --tiatoolbox-python /nonexistent
        ;;
    gpu-json)  # benchmarks/results/gpu.json; the Inception ratio from peers-inception-large
        run gpu-json "$py" benchmarks/gpu_json.py benchmarks/results/gpu.json \
            --peers-log "$out/peers-inception-large.log"
        cp benchmarks/results/gpu.json "$out/gpu.json" 2>/dev/null || true
        ;;
    *) echo "unknown step $step" ;;
    esac
done
