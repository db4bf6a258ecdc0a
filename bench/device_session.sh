#!/usr/bin/env bash
# One GPU session's device call, prepared: wheels, a CUDA smoke, the quick GPU check of issue 22, then
# the next campaign slice of issue 21 with the time left, all packed into at most 8 files under $OUT.
#
# The `run` tool call of the GPU session (bench/README.md, "The device session"), after `make gpu-wheels`
# and `mkdir -p local/gpu && cp ../shared/data/cifar10/cifar10_jpeg_q75.npz local/gpu/` here:
#   command:   bash bench/device_session.sh cifar10_linf
#   carry:     [".whl", "local/gpu"]
#   timeout_s: 600
# then give_back at once. Back here (<files_at> is the reply's files_at):
#   python bench/gpu_quick.py unpack <files_at>/gpu_quick.tar
#   python bench/campaign.py unpack <files_at>/campaign_cifar10_linf.tar
#   python bench/campaign.py aggregate cifar10_linf && python bench/gpu_quick.py summary bench/results
#
# The CPU dry run of the whole script (same steps and files; tiny sizes, the smoke grid, one run):
#   SESSION_DEVICE=cpu SESSION_TINY=1 SESSION_TOTAL_S=300 SESSION_CAMPAIGN_ARGS="--seeds 0 --configs gradmatch_0.5" \
#   SESSION_CAMPAIGN_RESULTS=local/session/campaign OUT=local/session/out bash bench/device_session.sh smoke
#
# Steps, each under its own limit and never past SESSION_TOTAL_S (default 540 s) less a reserve for
# packing (SESSION_RESERVE_S, 30); a failing step is logged and the next one runs:
#   1. wheels: .whl/*.whl into a private folder (no index);
#   2. smoke (SESSION_SMOKE_S, 90): the GPU tests and compiled-vs-eager training (-m "": every test named,
#      the slow compiled one included); a failure skips the campaign (SESSION_FORCE=1 runs it anyway);
#   3. the quick check, SESSION_QUICK_S (160) in all, into $quick (local/session/quick):
#      throughput (SESSION_THROUGHPUT_S, 85): bench/throughput.py, resnet18_cifar, batch 512, bf16, PGD-10
#        and TRADES-10 eager and compiled, the lever variants compiled (`--variants levers`: all,
#        reduce_overhead, fold_bn, fused; a lever not merged is a skipped row), torch.profiler summaries of
#        PGD-10 (baseline eager and compiled, all), with a soft --time-limit so it stops between rows;
#      peer (SESSION_PEER_S, 55): bench/peer_baseline.py, advtrain (compiled, as a user gets it) vs the
#        bf16 + channels_last loop, that loop compiled, and the fp32 loop;
#      craig (SESSION_CRAIG_S, 20): bench/solvers.py --craig at 50,000 × 10 (host loop and batched greedy),
#        appended to the committed solvers_<device>.json;
#      then bench/gpu_quick.py summary (targets 1, 3, 5) and pack -> $OUT/gpu_quick.tar;
#   4. campaign: bench/campaign.py run GRID --budget-s <what is left> (it starts only runs whose estimate
#      fits and stops one 60 s past the budget), rewriting $OUT/campaign_GRID.tar after each finished run,
#      then the aggregate ($OUT/campaign_GRID.md, .png) and the children's logs ($OUT/campaign_logs.tar);
#   5. $OUT holds session.log, gpu_quick.tar, gpu_quick_<device>.md, campaign_GRID.tar/.md/.png and
#      campaign_logs.tar: 7 files of the 8 that come back (counted at the end).
# Knobs: SESSION_THROUGHPUT_ARGS / SESSION_PEER_ARGS / SESSION_CRAIG_ARGS replace a step's arguments;
# SESSION_CAMPAIGN_ARGS adds to campaign.py run's; SESSION_CAMPAIGN_RESULTS / SESSION_CAMPAIGN_RUNS / SESSION_QUICK_DIR
# move its records, run folders and quick-check folder; CIFAR_JPEG names the JPEG copy (local/gpu/...).
set -u
cd "$(dirname "$0")/.."
start=$SECONDS
grid=${1:-cifar10_linf}
total=${SESSION_TOTAL_S:-540}
reserve=${SESSION_RESERVE_S:-30}
device=${SESSION_DEVICE:-cuda}
dev=${device%%:*}
out=${OUT:-local/session/out}
quick=${SESSION_QUICK_DIR:-local/session/quick}
campaign_results=${SESSION_CAMPAIGN_RESULTS:-bench/results/campaign}
runs=${SESSION_CAMPAIGN_RUNS:-local/campaign}
py=${PYTHON:-python3}
mkdir -p "$out"
rm -rf "$quick" && mkdir -p "$quick"
log="$out/session.log"
: > "$log"
: > "$quick/steps.txt"
export PYTHONUNBUFFERED=1
say() { echo "== $* ($((SECONDS - start)) s)" | tee -a "$log"; }
left() { echo $((total - reserve - (SECONDS - start))); }

step() {  # step NAME LIMIT COMMAND...: run under min(LIMIT, time left) (STEP_CAP=0: LIMIT as given);
          # rc and seconds go to steps.txt
    local name=$1 limit=$2; shift 2
    local room; room=$(left)
    [ "${STEP_CAP:-1}" = 1 ] && [ "$room" -lt "$limit" ] && limit=$room
    if [ "$limit" -lt 5 ]; then
        say "$name: skipped, no time left"; echo "$name skipped (no time)" >> "$quick/steps.txt"; return 99
    fi
    local t0=$SECONDS
    say "$name (limit ${limit} s): $*"
    timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "$name rc=$rc $((SECONDS - t0))s" >> "$quick/steps.txt"
    say "$name: rc=$rc in $((SECONDS - t0)) s"
    return "$rc"
}

# 1. wheels
if compgen -G ".whl/*.whl" > /dev/null; then
    step wheels 60 $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/advtrain-site .whl/*.whl
    export PYTHONPATH=/tmp/advtrain-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$log"
fi
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" \
    2>&1 | tee -a "$log"

# 2. smoke: on CUDA every named test (-m "": the compiled one is marked slow); on a CPU the slow one is left out
if [ "$dev" = cuda ]; then marks=""; else marks="gpu or not slow"; fi
smoke_rc=0
step smoke "${SESSION_SMOKE_S:-90}" $py -m pytest -q -x -p no:cacheprovider -m "$marks" --device "$device" \
    tests/integration/test_gpu.py tests/unit/test_device_paths.py::test_compiled_training_matches_the_eager_loss \
    || smoke_rc=$?

# 3. the quick check
quick_end=$((SECONDS + ${SESSION_QUICK_S:-160}))
quick_left() { local q=$((quick_end - SECONDS)); local a; a=$(left); [ "$a" -lt "$q" ] && q=$a; echo "$q"; }
cap() { local q; q=$(quick_left); [ "$q" -lt "$1" ] && echo "$q" || echo "$1"; }
if [ "${SESSION_TINY:-0}" = 1 ]; then
    t_args="--device $device --models resnet_tiny_cifar --batch-size 16 --steps 2 --repeats 1 --objectives pgd10,trades10
            --compile off --variants levers --variant-objectives pgd10 --profile --profile-steps 2"
    p_args="--device $device --model resnet_tiny_cifar --batch-size 16 --steps 2 --repeats 1 --workers 0
            --loops ${SESSION_PEER_LOOPS:-bf16,plain}"
    c_args="--craig --device $device --n 2000"
else
    t_args="--device $device --models resnet18_cifar --batch-size 512 --steps 20 --repeats 2 --precision bf16
            --objectives pgd10,trades10 --compile both --variants levers --variant-compile on
            --profile --profile-variants baseline,all --profile-steps 3"
    p_args="--device $device --model resnet18_cifar --batch-size 512 --steps 10 --repeats 2 --workers 8
            --loops ${SESSION_PEER_LOOPS:-bf16,compiled,plain}"
    c_args="--craig --device $device --n 50000"
fi
limit=$(cap "${SESSION_THROUGHPUT_S:-85}")
soft=$((limit - 12)); [ "$soft" -lt 1 ] && soft=1
# shellcheck disable=SC2086
step throughput "$limit" $py bench/throughput.py ${SESSION_THROUGHPUT_ARGS:-$t_args} --time-limit "$soft" \
    --name "throughput_${dev}_levers" --out "$quick"
# shellcheck disable=SC2086
step peer "$(cap "${SESSION_PEER_S:-55}")" $py bench/peer_baseline.py ${SESSION_PEER_ARGS:-$p_args} \
    --name "peer_baseline_$dev" --out "$quick"
[ -f "bench/results/solvers_$dev.json" ] && cp "bench/results/solvers_$dev.json" "$quick/"  # keep earlier rows
# shellcheck disable=SC2086
step craig "$(cap "${SESSION_CRAIG_S:-20}")" $py bench/solvers.py ${SESSION_CRAIG_ARGS:-$c_args} --out "$quick"
bundle() {  # the quick check's summary and tar (again at the end, with this call's campaign records)
    cp "$log" "$quick/gpu_quick_$dev.log"
    timeout 30 $py bench/gpu_quick.py summary "$quick" --device "$dev" --steps-file "$quick/steps.txt" \
        --campaign "$campaign_results/$grid" > /dev/null 2>> "$log"
    timeout 30 $py bench/gpu_quick.py pack "$quick" "$out/gpu_quick.tar" 2>&1 | tee -a "$log"
    [ -f "$quick/gpu_quick_$dev.md" ] && cp "$quick/gpu_quick_$dev.md" "$out/"
}
bundle

# 4. the campaign slice with what is left
rc=0
if [ "$smoke_rc" -ne 0 ] && [ "${SESSION_FORCE:-0}" != 1 ]; then
    say "campaign: skipped, the smoke failed (rc=$smoke_rc; SESSION_FORCE=1 runs it anyway)"; rc=3
else
    jpeg=${CIFAR_JPEG:-local/gpu/cifar10_jpeg_q75.npz}
    [ -f "$jpeg" ] || jpeg=../shared/data/cifar10/cifar10_jpeg_q75.npz
    jpeg_arg=()
    [ -f "$jpeg" ] && jpeg_arg=(--jpeg "$jpeg")
    budget=$(left)
    if [ "$budget" -lt "${SESSION_MIN_SLICE_S:-30}" ]; then
        say "campaign: skipped, ${budget} s left"
    else
        # campaign.py stops a run 60 s past its budget: the hard limit gives it that and 10 s more, past
        # SESSION_TOTAL_S when it happens (540 + 70 - 30 reserve = 580 s, inside timeout_s 600)
        # shellcheck disable=SC2086
        STEP_CAP=0 step campaign $((budget + 70)) $py bench/campaign.py run "$grid" --device "$device" --budget-s "$budget" \
            --results "$campaign_results" --runs "$runs" "${jpeg_arg[@]}" --tar "$out/campaign_$grid.tar" \
            ${SESSION_CAMPAIGN_ARGS:-} || rc=$?
    fi
fi
timeout 20 $py bench/campaign.py aggregate "$grid" --results "$campaign_results" --out "$out" 2>&1 | tee -a "$log"
(cd "$runs" 2>/dev/null && tar -cf - "$grid"/*.log 2>/dev/null) > "$out/campaign_logs.tar"
bundle

# 5. what comes back: at most 8 files, none in a folder
files=$(find "$out" -type f | wc -l)
say "done: $files file(s) in \$OUT (at most 8 come back): $(cd "$out" && ls | tr '\n' ' ')"
[ "$files" -le 8 ] || say "WARNING: more than 8 files in \$OUT; some will not come back"
exit "$rc"
