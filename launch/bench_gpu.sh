#!/usr/bin/env bash
# The GPU figures of issue 11 in one prepared run on one H100/H200: the GPU tests, the variant
# table for model=base (operator stage) against the targets in docs/benchmarks.md, and the batch
# axis. Not yet run on a GPU: time it there before relying on one call's limit. Results land in
# docs/benchmarks.md (sections bench:gpu, bench_batch:gpu) and outputs/, and are copied to $OUT.
# On a machine with torch but no Hydra and no package index, run launch/gpu_wheels.sh here first
# and carry .whl: the wheels go into /tmp/site, and UPS runs from this tree uninstalled.
#   bash launch/bench_gpu.sh [extra overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if [ -d .whl ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# An installed UPS ships conf/ as ups.conf; uninstalled, a link stands in for it.
"$py" -c "import ups.conf" 2>/dev/null || ln -sfn ../conf ups/conf
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
"$py" -m pytest -m gpu -q -p no:cacheprovider
"$py" -m ups.bench hardware=gpu model=base trainer.batch_size=64 bench.steps=30 \
    "bench.variants=[baseline,bf16,compile,fused_adamw,ac_every,ac_every_2,sdpa_flash,sdpa_efficient,sdpa_math,preload,workers,frozen_encoder,latent_cache,all]" "$@"
"$py" -m ups.bench hardware=gpu model=base bench.axis=batch "bench.points=[16,32,64,128,256]" bench.steps=20 "$@"
if [ -n "${OUT:-}" ]; then cp -r docs/benchmarks.md docs/bench_*.png outputs "$OUT"/; fi
