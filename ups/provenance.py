"""``provenance.json``: what a run was made from, written once into its directory.

The code (git commit, and whether the tree held uncommitted changes), the versions of the libraries
that decide the numbers (torch, numpy, h5py, UPS), the data files by name with the fingerprints the
data checks already compute (size and sha256 of sampled blocks, ``ups.data.validate``), the seed and
the world size. The leaderboard shows it beside each run's numbers (``ups/leaderboard/``).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

FILE = "provenance.json"


def git_state(repo: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout holding UPS's code.

    None where the code is not a git checkout (an installed wheel) or git is missing: unknown, not clean.
    """
    where = Path(repo) if repo else Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        # Untracked files count: a new module the run imported is part of the code that ran.
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain"], capture_output=True, text=True, timeout=30
        )
        return {
            "commit": commit.stdout.strip(),
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None,
        }
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def versions() -> dict[str, str | None]:
    """Versions of Python and of the packages that decide a run's numbers (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "numpy", "h5py", "ups"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out["torch"] is None and "torch" in sys.modules:  # a source build without package metadata
        out["torch"] = str(sys.modules["torch"].__version__)
    return out


def collect(cfg: Any, tasks: Sequence, world_size: int) -> dict[str, Any]:
    """The provenance record of a run about to train ``tasks`` as ``cfg`` says, on ``world_size`` ranks."""
    from ups.data.validate import data_fingerprints  # computed already by the data checks: cached, cheap

    return {
        **git_state(),
        "versions": versions(),
        "data": data_fingerprints(tasks),
        "data_dir": str(Path(cfg.paths.data_dir).resolve()),
        "seed": int(cfg.trainer.seed),
        "world_size": int(world_size),
        "host": platform.node(),
        "choices": _choices(),
    }


def _choices() -> dict[str, str]:
    """The config options the run was composed from (``model: tiny``); {} where Hydra is not running
    in this process (a launched rank, a test calling ``run(cfg)``)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None and "/" not in k}


def write_once(run_dir: str | Path, cfg: Any, tasks: Sequence, world_size: int) -> Path:
    """Write ``<run_dir>/provenance.json`` unless the run already has it and a checkpoint to resume:
    a resumed run keeps what it started from (a resume onto other data is checked by the trainer);
    a run that starts from nothing (new, or cleared by ``trainer.overwrite``) records itself."""
    path = Path(run_dir) / FILE
    resumes = any(Path(run_dir).glob("checkpoints/*/*/COMPLETE"))
    if not (path.exists() and resumes):
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(collect(cfg, tasks, world_size), indent=1))
        tmp.replace(path)
    return path


def read(run_dir: str | Path) -> dict[str, Any]:
    """A run's provenance record; {} for a run without one (older than this file, or not started)."""
    try:
        return json.loads((Path(run_dir) / FILE).read_text())
    except (OSError, ValueError):
        return {}
