#!/usr/bin/env bash
# One slice of a campaign grid in one GPU device call (default 8 minutes in all):
#
#   bash bench/campaign_slice.sh GRID            # e.g. cifar10_linf; results under $OUT
#   CAMPAIGN_DEVICE=cpu CAMPAIGN_RESULTS=local/campaign/results OUT=local/campaign/out \
#       bash bench/campaign_slice.sh smoke                                          # the CPU dry run
#
# Steps, each logged to $OUT/slice.log:
#   1. install .whl/*.whl (omegaconf, torchattacks, lpips: `make gpu-wheels` here) into a private folder;
#   2. a CUDA smoke under 90 s (the GPU tests and compiled-vs-eager training; CAMPAIGN_SMOKE overrides
#      the pytest arguments); a failing smoke stops the script before any run (CAMPAIGN_FORCE=1: go on);
#   3. `bench/campaign.py run GRID` with what is left of CAMPAIGN_TOTAL_S (default 480) less a
#      reserve for packing: it decodes the carried CIFAR-10 JPEG copy (CIFAR_JPEG, default
#      local/gpu/cifar10_jpeg_q75.npz) and starts only runs whose estimate fits; after each finished run
#      it rewrites $OUT/campaign_GRID.tar (every JSON of the grid), so a cut-off call still brings
#      back all finished runs;
#   4. the aggregate of everything finished so far ($OUT/campaign_GRID.md and .png) and the children's
#      logs ($OUT/campaign_logs.tar).
# Back here: python bench/campaign.py unpack <files_at>/campaign_GRID.tar, then
# python bench/campaign.py aggregate GRID, and commit bench/results/campaign/GRID/*.json with the aggregate.
set -u
cd "$(dirname "$0")/.."
start=$SECONDS
grid=${1:?usage: bash bench/campaign_slice.sh GRID}
total=${CAMPAIGN_TOTAL_S:-480}
reserve=${CAMPAIGN_RESERVE_S:-25}
device=${CAMPAIGN_DEVICE:-cuda}
out=${OUT:-local/campaign/out}
results=${CAMPAIGN_RESULTS:-bench/results/campaign}
mkdir -p "$out"
log="$out/slice.log"
: > "$log"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
say() { echo "== $* ($((SECONDS - start)) s)" | tee -a "$log"; }

if compgen -G ".whl/*.whl" > /dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/advtrain-site \
        .whl/*.whl 2>&1 | tee -a "$log"
    export PYTHONPATH=/tmp/advtrain-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
say "wheels"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$log"
fi

smoke=${CAMPAIGN_SMOKE:-tests/integration/test_gpu.py tests/unit/test_device_paths.py::test_compiled_training_matches_the_eager_loss}
# shellcheck disable=SC2086
timeout 90 $py -m pytest -q -x -p no:cacheprovider -m "gpu or not slow" --device "$device" $smoke 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
say "smoke rc=$rc"
if [ "$rc" -ne 0 ] && [ "${CAMPAIGN_FORCE:-0}" != 1 ]; then
    say "smoke failed: no run started (CAMPAIGN_FORCE=1 runs the slice anyway)"
    exit 3
fi

jpeg=${CIFAR_JPEG:-local/gpu/cifar10_jpeg_q75.npz}
[ -f "$jpeg" ] || jpeg=../shared/data/cifar10/cifar10_jpeg_q75.npz
jpeg_arg=()
[ -f "$jpeg" ] && jpeg_arg=(--jpeg "$jpeg")
budget=$((total - (SECONDS - start) - reserve))
say "slice of $grid, budget ${budget} s"
$py bench/campaign.py run "$grid" --device "$device" --budget-s "$budget" --results "$results" "${jpeg_arg[@]}" \
    --tar "$out/campaign_$grid.tar" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
say "slice rc=$rc"
$py bench/campaign.py aggregate "$grid" --results "$results" --out "$out" 2>&1 | tee -a "$log"
(cd local/campaign && tar -cf - "$grid"/*.log 2>/dev/null) > "$out/campaign_logs.tar"
say "done"
exit "$rc"
