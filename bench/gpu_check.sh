#!/usr/bin/env bash
# The prepared GPU check: one command for one H100/H200 with no network, under 8 minutes.
#
#   make gpu-wheels                         # here, with network: the wheels the GPU image lacks -> .whl/
#   bash bench/gpu_check.sh [RESULTS_DIR]   # there (default RESULTS_DIR: bench/results)
#
# Steps (each under its own time limit; a failing step is reported and the others still run):
#   1. install .whl/*.whl into a private target (omegaconf, lpips, torchattacks; no index);
#   2. pytest -m gpu, plus the device-agnostic tests of tests/unit/test_device_paths.py and
#      tests/unit/test_folding.py (BatchNorm folding) on CUDA;
#   3. bench/throughput.py: resnet18_cifar, batch 512, bf16: clean, FGSM, PGD-10, TRADES-10 img/s,
#      counted GFLOP/image, % of the measured bf16 matrix-product peak, peak GPU memory;
#   4. bench/peer_baseline.py: the reference-style fp32 loop and torchattacks' PGD in the same run;
#   5. bench/acs_short.py: full vs GradMatch 50% on the CIFAR-10 JPEG copy (CIFAR_JPEG, default
#      ../shared/data/cifar10/cifar10_jpeg_q75.npz, else local/gpu/cifar10_jpeg_q75.npz), and the
#      estimate of the paper's 120-epoch protocol;
#   6. bench/throughput.py again with train.compile (slowest to warm up: last);
#   then bench/gpu_summary.py prints one table and writes gpu_check_<device>.md.
set -u
cd "$(dirname "$0")/.."
RESULTS=$(realpath -m "${1:-bench/results}")
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=()

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    status+=("$name rc=$rc $((SECONDS - t0))s")
    echo "== $name: rc=$rc in $((SECONDS - t0))s" | tee -a "$LOG"
}

if compgen -G ".whl/*.whl" > /dev/null; then
    step wheels 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/advtrain-site .whl/*.whl
    export PYTHONPATH=/tmp/advtrain-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$LOG"

# -m "": every test of both files, the compiled-training check (slow on a CPU, so out of make test) included
step tests 100 $PY -m pytest -q -p no:cacheprovider -m "" --device cuda \
    tests/integration/test_gpu.py tests/unit/test_device_paths.py tests/unit/test_folding.py
step throughput 120 $PY bench/throughput.py --device cuda --models resnet18_cifar --batch-size 512 --steps 20 \
    --repeats 2 --precision bf16 --compile off --results "$RESULTS"
step peer_baseline 75 $PY bench/peer_baseline.py --device cuda --model resnet18_cifar --batch-size 512 --steps 20 \
    --repeats 2 --workers 8 --results "$RESULTS"
jpeg=${CIFAR_JPEG:-../shared/data/cifar10/cifar10_jpeg_q75.npz}
[ -f "$jpeg" ] || jpeg=local/gpu/cifar10_jpeg_q75.npz
if [ -f "$jpeg" ]; then
    step acs_short 160 $PY bench/acs_short.py --device cuda --jpeg "$jpeg" --batch-size 512 --epochs 3 \
        --results "$RESULTS"
else
    echo "== acs_short: skipped, no CIFAR-10 JPEG copy at $jpeg" | tee -a "$LOG"; status+=("acs_short skipped")
fi
step throughput_compile 120 $PY bench/throughput.py --device cuda --models resnet18_cifar --batch-size 512 \
    --steps 20 --repeats 2 --precision bf16 --compile on --name throughput_cuda_compile \
    --results "$RESULTS"
$PY bench/gpu_summary.py "$RESULTS" "${status[@]}" 2>&1 | tee -a "$LOG"
