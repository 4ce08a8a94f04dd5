#!/usr/bin/env bash
# Wheels for a GPU machine that has torch but cannot reach a package index (the device machines of
# this project: Python 3.12 with torch, h5py, scipy, tqdm, cloudpickle, no Hydra). Run here, in the
# repo root, with the project's venv active; it writes .whl/ (git-ignored locally), which
# launch/bench_gpu.sh installs when present. The versions are the ones installed here.
#   bash launch/gpu_wheels.sh [python-version, default 3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-3.12}
mkdir -p .whl
# git-ignored so that it is not committed; the run tool then carries it (carry: [".whl"]). In a
# worktree .git is a file: ask git where its exclude file is.
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins=()
for name in hydra-core omegaconf submitit hydra-submitit-launcher; do pins+=("$name==$(version "$name")"); done
python -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
# Hydra's grammar runtime is published as a source archive only: build its pure-Python wheel here.
python -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
ls -1 .whl
