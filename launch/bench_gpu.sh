#!/usr/bin/env bash
# Issue 22's GPU figures in one prepared run on one H100/H200, sized to about 8 minutes of commands
# (the parts' limits add up to 480 s; the device machine's start-up comes on top). Each part has its
# own time limit (timeout, then KILL 5 s later), so an overrun costs that part only and the next still
# runs; a cut part keeps what it finished (the variants and the profile rewrite their files after
# each variant). Whole-model compilation (hardware.compile_scope=model, in the "all" variant) is
# the slow start: it runs once per part that needs it, and pdebench11 (11 tasks: 11 graphs) uses
# "all_eager" (all but compile) instead.
#   1. pytest_gpu   pytest -m gpu (bf16+compile training, CPU offload memory)      limit  60 s
#                   beside it: pdebench11's synthetic files (ups.data.synth)       limit  60 s
#   2. variants     model=base, batch $BATCH, $VARIANTS ("all" second, so a cut    limit 170 s
#                   keeps baseline and all)
#   3. tune         python -m ups.tune model=base: the batch the tuner picks       limit  50 s
#   4. batch_axis   model=base, batch axis $POINTS plus the tuner's batch          limit  60 s
#   5. pdebench11   model=$P11_MODEL, task=pdebench11, batch $P11_BATCH,           limit  80 s
#                   $P11_VARIANTS: samples/s of one latent network on 11 families
#   6. profile      $PROFILE_VARIANTS: kernels and ops per step, GPU busy share    limit  60 s
# Everything lands in $OUT (or outputs/gpu_bench): one folder and one log per part, summary.txt
# (each part's command, exit code and seconds), plus docs/benchmarks.md with its sections bench:gpu
# and bench_batch:gpu filled and the axis plot (the pdebench11 table stays in pdebench11/bench.md,
# so it does not overwrite bench:gpu). A part's exit 124 or 137 is its time limit.
# On a machine with torch but no Hydra and no package index, run launch/gpu_wheels.sh here first
# and carry .whl: the wheels go into /tmp/site, and UPS runs from this tree uninstalled.
#   bash launch/bench_gpu.sh [extra overrides for every part...]
# A CPU stand-in (checks the script, measures nothing worth keeping; 103-263 s on 2 cores, docs/benchmarks.md):
#   HW=cpu MODEL=tiny BATCH=4 STEPS=2 WARMUP=1 POINTS='[2,4]' VARIANTS='[baseline,all,sdpa_flash]' \
#     P11_MODEL=tiny P11_BATCH=4 P11_VARIANTS='[baseline]' PROFILE_VARIANTS='[baseline]' TUNE_MAX=8 \
#     LIMIT_SCALE=3 DOCS=null bash launch/bench_gpu.sh hardware.threads=1
set -uo pipefail  # not -e: a failed part is reported and the next one still runs
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
HW=${HW:-gpu} MODEL=${MODEL:-base} BATCH=${BATCH:-64} STEPS=${STEPS:-20} WARMUP=${WARMUP:-3}
VARIANTS=${VARIANTS:-[baseline,all,bf16,sdpa_flash,fused_adamw,all_eager]}
POINTS=${POINTS:-[32,64,256,1024]}
P11_MODEL=${P11_MODEL:-small} P11_BATCH=${P11_BATCH:-64} P11_VARIANTS=${P11_VARIANTS:-[baseline,all_eager]}
PROFILE_VARIANTS=${PROFILE_VARIANTS:-[baseline,all]}
TUNE_MAX=${TUNE_MAX:-4096}
LIMIT_SCALE=${LIMIT_SCALE:-1}  # the CPU stand-in stretches the limits; on the GPU they stay as sized
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
    local name=$1 limit=$(( $2 * LIMIT_SCALE )); shift 2
    local t0=$SECONDS
    echo "=== $name (limit ${limit}s): $*" | tee -a "$RES/summary.txt"
    timeout --kill-after=5 "$limit" "$@" > "$RES/$name.log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s$([ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo ' (time limit)')" \
        | tee -a "$RES/summary.txt"
    tail -n 30 "$RES/$name.log"
    [ "$rc" -eq 0 ] || status=1
}
{ date -Is; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
} | tee "$RES/summary.txt"
common=(hardware="$HW" bench.warmup_steps="$WARMUP" bench.plot_dir="$RES")
# pdebench11's synthetic files (11 families, about a minute of CPU), written while the GPU tests run,
# so that neither the pdebench11 part's limit nor the variants' measurements pay for them
timeout --kill-after=5 $(( 60 * LIMIT_SCALE )) "$py" -m ups.data.synth tasks=pdebench11 out="${UPS_DATA_DIR:-data}" \
    > "$RES/pdebench11_data.log" 2>&1 &
gen=$!
part pytest_gpu 60 "$py" -m pytest -m gpu -q -p no:cacheprovider -rs tests/test_gpu.py tests/test_offload.py
wait "$gen"; echo "=== pdebench11 data: exit $? after $SECONDS s (part 5 generates what is missing)" | tee -a "$RES/summary.txt"
part variants 170 "$py" -m ups.bench "${common[@]}" model="$MODEL" bench.docs="$DOCS" trainer.batch_size="$BATCH" \
    bench.steps="$STEPS" "bench.variants=$VARIANTS" hydra.run.dir="$RES/variants" "$@"
part tune 50 "$py" -m ups.tune hardware="$HW" model="$MODEL" tune.max_batch="$TUNE_MAX" hydra.run.dir="$RES/tune" "$@"
tuned=$(grep -o 'trainer.batch_size=[0-9]*' "$RES/tune.log" 2>/dev/null | tail -n 1 | cut -d= -f2)
echo "=== the tuner's batch: ${tuned:-none (the tune part failed)}" | tee -a "$RES/summary.txt"
points=$POINTS
if [ -n "$tuned" ] && ! [[ ",${POINTS:1:-1}," == *",$tuned,"* ]]; then points="${POINTS%]},$tuned]"; fi
part batch_axis 60 "$py" -m ups.bench "${common[@]}" model="$MODEL" bench.docs="$DOCS" bench.axis=batch \
    "bench.points=$points" bench.steps=$(( STEPS / 2 > 2 ? STEPS / 2 : 2 )) hydra.run.dir="$RES/batch_axis" "$@"
part pdebench11 80 "$py" -m ups.bench "${common[@]}" model="$P11_MODEL" task=pdebench11 bench.docs=null \
    trainer.batch_size="$P11_BATCH" bench.steps=$(( STEPS / 2 > 2 ? STEPS / 2 : 2 )) "bench.variants=$P11_VARIANTS" \
    hydra.run.dir="$RES/pdebench11" "$@"
part profile 60 "$py" -m ups.bench.profile "${common[@]}" model="$MODEL" trainer.batch_size="$BATCH" bench.steps=5 \
    "bench.variants=$PROFILE_VARIANTS" hydra.run.dir="$RES/profile" "$@"
# pdebench11's figure against issue 22's target (10 x 2,358 samples/s), from the table as far as it got
for f in "$RES"/pdebench11/bench.json "$RES"/pdebench11/bench_partial.json; do
    [ -f "$f" ] || continue
    "$py" - "$f" <<'EOF' | tee -a "$RES/summary.txt"
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
for r in rows:
    if r.get("status") == "ok":
        print(f"=== pdebench11 {r['variant']}: {r['samples_per_s']:,.0f} samples/s "
              f"({r['samples_per_s'] / 2358:.2f} x the 2,358 of 2026-12-04; target 10 x)")
EOF
    break
done
if [ "$DOCS" != null ]; then cp "$DOCS" "$RES"/; fi
echo "=== done in $SECONDS s, results in $RES" | tee -a "$RES/summary.txt"
exit $status
