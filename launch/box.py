"""Write the start-up script for a rented single- or multi-GPU machine.

    python launch/box.py --gpus 8 --data rsync://host/pdebench/ -- task=pdebench11 model=base > start.sh
    python launch/box.py --gpus 1 --data /mnt/pdebench --repo https://github.com/you/ups.git --out start.sh

The script it writes, run on the machine (``bash start.sh``), in order, stopping at the first failure:

1. checks the environment: the NVIDIA driver (``nvidia-smi``), that the machine has at least
   ``--gpus`` GPUs, Python >= 3.10, and free disk space;
2. installs UPS into a virtual environment (a clone of ``--repo`` at ``--ref``, or the directory it
   runs in), with the CUDA build of torch pip picks by default;
3. checks NCCL: one all-reduce across all GPUs (``torch.distributed`` with the NCCL backend);
4. syncs the data from ``--data`` (a local path or ``rsync://``/``ssh`` source with rsync, an
   ``s3://`` bucket with the AWS CLI, an ``http(s)://`` archive with curl) into ``--data-dir``;
5. starts training with ``parallelism=ddp<N>`` (UPS launches its own ranks; ``--fsdp`` for FSDP2),
   ``hardware=gpu``, ``paths.data_dir``, ``paths.output_dir=--run-dir`` (default ``runs/box``) and the
   overrides after ``--``, under ``nohup`` with the log in ``train.out``, so that a dropped SSH session
   does not stop it. Rerun the script to resume: the fixed run directory is where the rerun finds its
   checkpoints (without it every start would get a new ``outputs/<date>/<time>``).

Like everything in launch/, it only writes commands; ``tests/test_box.py`` checks the script it
writes (syntax with ``bash -n``, every step present, the exact training command) without running it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

LAYOUTS = {1: "single", 2: "{s}2", 4: "{s}4", 8: "{s}8"}


def parallelism(gpus: int, fsdp: bool) -> str:
    """The parallelism preset for ``gpus`` GPUs on one node."""
    if gpus not in LAYOUTS:
        raise SystemExit(f"--gpus must be one of {sorted(LAYOUTS)} (a parallelism preset each), got {gpus}")
    return LAYOUTS[gpus].format(s="fsdp2_" if fsdp else "ddp")


def sync_command(source: str, target: str) -> str:
    """The shell command copying the data from ``source`` into ``target``."""
    q, t = shlex.quote(source), shlex.quote(target.rstrip("/") + "/")
    if source.startswith("s3://"):
        return f"aws s3 sync {q} {t}"
    if source.startswith(("http://", "https://")):
        return f"curl -fL --retry 5 {q} | tar -x -C {t}"
    return f"rsync -a --partial --info=progress2 {q.rstrip('/')}/ {t}"  # a path, host:path or rsync://


def train_command(gpus: int, fsdp: bool, data_dir: str, overrides: list[str], run_dir: str = "runs/box") -> str:
    """The exact ``python -m ups.train`` command the box runs; the same command resumes in ``run_dir``."""
    args = [
        "python",
        "-m",
        "ups.train",
        f"parallelism={parallelism(gpus, fsdp)}",
        "hardware=gpu",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={run_dir}",
        *overrides,
    ]
    return " ".join(shlex.quote(a) for a in args)


def script(
    gpus: int,
    data: str | None,
    data_dir: str,
    overrides: list[str],
    repo: str | None = None,
    ref: str = "main",
    fsdp: bool = False,
    min_disk_gb: int = 50,
    run_dir: str = "runs/box",
) -> str:
    """The start-up script as text."""
    install = (
        f"git clone --branch {shlex.quote(ref)} {shlex.quote(repo)} ups || git -C ups pull --ff-only\ncd ups"
        if repo
        else 'cd "$(dirname "$0")"'
    )
    sync = sync_command(data, data_dir) if data else "echo 'no --data given: training on the files already in place'"
    return f"""#!/usr/bin/env bash
# Start-up script for a rented GPU machine, written by launch/box.py. Rerun it to resume (in {run_dir}).
set -euo pipefail

echo "== 1/5 environment"
command -v nvidia-smi >/dev/null || {{ echo "no NVIDIA driver (nvidia-smi not found)"; exit 1; }}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
found=$(nvidia-smi --list-gpus | wc -l)
[ "$found" -ge {gpus} ] || {{ echo "this machine has $found GPUs, the run needs {gpus}"; exit 1; }}
python3 -c 'import sys; assert sys.version_info >= (3, 10), sys.version' || {{ echo "Python >= 3.10 needed"; exit 1; }}
free_gb=$(df -Pk . | awk 'NR==2 {{print int($4 / 1048576)}}')
[ "$free_gb" -ge {min_disk_gb} ] || {{ echo "only ${{free_gb}} GB free here, want {min_disk_gb}"; exit 1; }}

echo "== 2/5 install"
{install}
python3 -m venv .venv
. .venv/bin/activate
pip install -q -e .

echo "== 3/5 NCCL"
python - <<'PY'
import os, torch, torch.distributed as dist, torch.multiprocessing as mp
def check(rank, world):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    x = torch.ones(1, device="cuda")
    dist.all_reduce(x)
    assert x.item() == world, x.item()
    dist.destroy_process_group()
world = {gpus}
assert torch.cuda.device_count() >= world, torch.cuda.device_count()
mp.spawn(check, args=(world,), nprocs=world)
print(f"NCCL all-reduce over {{world}} GPUs: ok (torch {{torch.__version__}}, NCCL {{torch.cuda.nccl.version()}})")
PY

echo "== 4/5 data"
mkdir -p {shlex.quote(data_dir)}
{sync}

echo "== 5/5 train (log: train.out)"
nohup {train_command(gpus, fsdp, data_dir, overrides, run_dir)} > train.out 2>&1 &
echo "training in the background, pid $!: tail -f $(pwd)/train.out"
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpus", type=int, default=1, help="GPUs on the machine: 1, 2, 4 or 8")
    p.add_argument("--data", help="where the PDEBench files come from: a path, host:path, rsync://, s3://, http(s)://")
    p.add_argument("--data-dir", default="/data/pdebench", help="where they go on the machine")
    p.add_argument("--repo", help="git URL to clone; default: run the script from a checkout")
    p.add_argument("--ref", default="main")
    p.add_argument("--fsdp", action="store_true", help="FSDP2 instead of DDP")
    p.add_argument("--min-disk-gb", type=int, default=50)
    p.add_argument("--run-dir", default="runs/box", help="the run directory; a rerun of the script resumes in it")
    p.add_argument("--out", type=Path, help="write the script here (executable) instead of stdout")
    a = p.parse_args(argv)
    text = script(a.gpus, a.data, a.data_dir, overrides, a.repo, a.ref, a.fsdp, a.min_disk_gb, a.run_dir)
    if a.out:
        a.out.write_text(text)
        a.out.chmod(0o755)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
