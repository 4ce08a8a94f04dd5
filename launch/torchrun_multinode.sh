#!/usr/bin/env bash
# Run this on every node with the same HEAD (address of node 0), NNODES and JOB id.
# Usage: HEAD=node0 NNODES=2 GPUS=8 JOB=myrun bash launch/torchrun_multinode.sh [hydra overrides...]
set -euo pipefail
: "${HEAD:?address of node 0}" "${NNODES:=2}" "${GPUS:=8}" "${JOB:=ups-$(date +%s)}"
exec torchrun --nnodes="$NNODES" --nproc_per_node="$GPUS" --rdzv-backend=c10d \
    --rdzv-endpoint="$HEAD:29500" --rdzv-id="$JOB" \
    -m ups.train parallelism=ddp"$GPUS" parallelism.nodes="$NNODES" hardware=gpu "$@"
