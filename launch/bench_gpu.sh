#!/usr/bin/env bash
# The GPU figures of issue 11 in one prepared run (about 10 minutes on one H100/H200):
# the GPU tests, the variant table for model=base (operator stage) against the targets in
# docs/benchmarks.md, and the batch axis. Results land in docs/benchmarks.md (section bench:gpu,
# bench_batch:gpu) and in outputs/; copy them back with the run's $OUT.
#   bash launch/bench_gpu.sh [extra overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
pytest -m gpu -q -p no:cacheprovider
python -m ups.bench hardware=gpu model=base trainer.batch_size=64 bench.steps=30 \
    "bench.variants=[baseline,bf16,compile,fused_adamw,ac_every,ac_every_2,sdpa_flash,sdpa_efficient,sdpa_math,preload,workers,frozen_encoder,latent_cache,all]" "$@"
python -m ups.bench hardware=gpu model=base bench.axis=batch "bench.points=[16,32,64,128,256]" bench.steps=20 "$@"
if [ -n "${OUT:-}" ]; then cp -r docs/benchmarks.md docs/bench_*.png outputs "$OUT"/; fi
