#!/usr/bin/env bash
# Issue 22's GPU figures in one prepared run on one H100/H200, sized to about 7-8 minutes (each part
# has its own time limit, so an overrun costs that part only and the rest still runs):
#   1. pytest -m gpu                                  (limit 90 s)
#   2. the variant table, model=base at batch $BATCH  (limit 240 s; bench_partial.json after each variant)
#   3. the batch axis $POINTS                         (limit 75 s)
#   4. a profile of $PROFILE_VARIANTS: kernels and ops per step, GPU busy share, syncs, top ops (limit 75 s)
# Everything lands in $OUT (or outputs/gpu_bench): one folder and one log per part, plus
# docs/benchmarks.md with its sections bench:gpu and bench_batch:gpu filled and the axis plot.
# On a machine with torch but no Hydra and no package index, run launch/gpu_wheels.sh here first
# and carry .whl: the wheels go into /tmp/site, and UPS runs from this tree uninstalled.
#   bash launch/bench_gpu.sh [extra overrides for every part...]
# A CPU stand-in (checks the script, measures nothing worth keeping):
#   HW=cpu MODEL=tiny BATCH=4 STEPS=2 WARMUP=1 POINTS='[2,4]' VARIANTS='[baseline,sdpa_flash]' \
#     PROFILE_VARIANTS='[baseline]' DOCS=null bash launch/bench_gpu.sh hardware.threads=1
set -uo pipefail  # not -e: a failed part is reported and the next one still runs
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
HW=${HW:-gpu} MODEL=${MODEL:-base} BATCH=${BATCH:-64} STEPS=${STEPS:-20} WARMUP=${WARMUP:-3}
VARIANTS=${VARIANTS:-[baseline,bf16,compile,fused_adamw,sdpa_flash,sdpa_efficient,preload,workers,frozen_encoder,latent_cache,all]}
POINTS=${POINTS:-[32,64,128,256]}
PROFILE_VARIANTS=${PROFILE_VARIANTS:-[baseline,all]}
DOCS=${DOCS:-docs/benchmarks.md}
RES=${OUT:-outputs/gpu_bench}
mkdir -p "$RES"
if [ -d .whl ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# An installed UPS ships conf/ as ups.conf; uninstalled, a link stands in for it.
"$py" -c "import ups.conf" 2>/dev/null || ln -sfn ../conf ups/conf
export PYTHONUNBUFFERED=1
status=0
part() {  # part NAME LIMIT_S COMMAND...: run with a limit, log to $RES/NAME.log, note the outcome
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "=== $name (limit ${limit}s): $*" | tee -a "$RES/summary.txt"
    timeout --kill-after=10 "$limit" "$@" > "$RES/$name.log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$RES/summary.txt"
    tail -n 40 "$RES/$name.log"
    [ "$rc" -eq 0 ] || status=1
}
{ date -Is; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
} | tee "$RES/summary.txt"
common=(hardware="$HW" model="$MODEL" bench.warmup_steps="$WARMUP" bench.docs="$DOCS" bench.plot_dir="$RES")
part pytest_gpu 90 "$py" -m pytest -m gpu -q -p no:cacheprovider -rs
part variants 240 "$py" -m ups.bench "${common[@]}" trainer.batch_size="$BATCH" bench.steps="$STEPS" \
    "bench.variants=$VARIANTS" hydra.run.dir="$RES/variants" "$@"
part batch_axis 75 "$py" -m ups.bench "${common[@]}" bench.axis=batch "bench.points=$POINTS" \
    bench.steps=$(( STEPS / 2 > 2 ? STEPS / 2 : 2 )) hydra.run.dir="$RES/batch_axis" "$@"
part profile 75 "$py" -m ups.bench.profile hardware="$HW" model="$MODEL" trainer.batch_size="$BATCH" \
    bench.warmup_steps="$WARMUP" bench.steps=5 "bench.variants=$PROFILE_VARIANTS" hydra.run.dir="$RES/profile" "$@"
if [ "$DOCS" != null ]; then cp "$DOCS" "$RES"/; fi
echo "=== done in $SECONDS s, results in $RES" | tee -a "$RES/summary.txt"
exit $status
