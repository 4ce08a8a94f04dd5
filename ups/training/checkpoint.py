"""Checkpoints in the run directory, written with ``torch.distributed.checkpoint`` (DCP).

Layout, one folder per stage (``stages.<name>``), step folders named by the global step::

    <run_dir>/checkpoints/<stage>/step_00000400/   DCP shards + .metadata, meta.json, COMPLETE
    <run_dir>/checkpoints/<stage>/best/            the stage's lowest validation nRMSE so far
    <run_dir>/checkpoints/<stage>/final/           the stage's end, plus model.pt (consolidated)

Every rank writes its shards into a temporary folder; after a barrier rank 0 writes the
``COMPLETE`` marker and renames the folder into place, so a crash mid-save leaves nothing that
:meth:`Checkpointer.latest` would load. DCP merges identical keys across ranks, so state that
differs per rank (RNG) is saved under a per-rank key.
"""
from __future__ import annotations

import contextlib
import json
import pickle
import warnings
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

MARKER = "COMPLETE"


def rng_state() -> dict:
    """Every random generator a step can draw from."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_key(rank: int) -> str:
    return f"rank{rank}"


def pack(obj: Any) -> bytes:
    """Non-tensor state as one opaque leaf, so DCP neither flattens nor reshapes it."""
    return pickle.dumps(obj)


def unpack(blob: bytes) -> Any:
    return pickle.loads(blob)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def _quiet_single_process() -> Any:
    """DCP warns that it assumes a single process when there is no group; here that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier() -> None:
    if _distributed():
        dist.barrier()


class Checkpointer:
    """Saves and finds complete checkpoints in one folder (a stage's). Every rank calls :meth:`save`."""

    def __init__(self, root: str | Path, keep_last_k: int = 2, is_main: bool = True):
        self.root = Path(root)
        self.keep_last_k, self.is_main = keep_last_k, is_main

    def save(self, state: dict, name: str, step: int, consolidate: bool = False) -> Path:
        """Write ``state`` to ``checkpoints/<name>`` atomically; prune old step folders."""
        final, tmp = self.root / name, self.root / f".{name}.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()  # the folder exists before anyone writes into it
        with _quiet_single_process():
            dcp.save(state, checkpoint_id=str(tmp), no_dist=not _distributed())
        _barrier()  # every rank's shards are on disk before the marker says so
        if self.is_main:
            (tmp / "meta.json").write_text(json.dumps({"step": step}))
            if consolidate:
                export_model(tmp, tmp / "model.pt")
            (tmp / MARKER).touch()
            self._swap_in(tmp, final)
            self._prune()
        _barrier()  # nobody looks for the checkpoint before it is in place
        return final

    def copy(self, src: str, dst: str) -> Path:
        """Copy a complete checkpoint folder to another name (e.g. a step to ``best``), atomically."""
        final, tmp = self.root / dst, self.root / f".{dst}.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.root / src, tmp)
            self._swap_in(tmp, final)
        _barrier()
        return final

    def _swap_in(self, tmp: Path, final: Path) -> None:
        """Rename a finished folder to its name, keeping the previous copy until the new one is in place."""
        old = self.root / f".{final.name}.old"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def _steps(self) -> list[Path]:
        return sorted((p for p in self.root.glob("step_*") if (p / MARKER).exists()), key=_step_of)

    def _prune(self) -> None:
        for p in self._steps()[: -self.keep_last_k]:
            shutil.rmtree(p, ignore_errors=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint: the final one if training finished, else the last step."""
        candidates = self._steps() + [p for p in (self.root / "final",) if (p / MARKER).exists()]
        if not candidates:
            return None
        # Prefer "final" over a step folder of the same step: it marks the stage as finished.
        return max(candidates, key=lambda p: _step_of(p) + (0.5 if p.name == "final" else 0.0))

    @staticmethod
    def load_into(path: str | Path, state: dict) -> dict:
        """Fill ``state`` (a template with the keys to read) from a complete checkpoint, in place."""
        path = Path(path)
        if not (path / MARKER).exists():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
        with _quiet_single_process():
            dcp.load(state, checkpoint_id=str(path), no_dist=not _distributed())
        return state

    @staticmethod
    def saved_keys(path: str | Path) -> set[str]:
        """Top-level keys stored in a checkpoint (e.g. which ranks saved RNG state)."""
        meta = dcp.FileSystemReader(str(path)).read_metadata()
        return {k.split(".")[0] for k in meta.state_dict_metadata}


def _step_of(path: Path) -> int:
    return json.loads((path / "meta.json").read_text())["step"]


def last_trained_stage(stages: Any) -> str:
    """The name of the last stage that trains (``steps`` not 0): its weights are the run's model."""
    return [name for name, stage in stages.items() if stage.get("steps") != 0][-1]


def run_checkpoint(run_dir: str | Path, stages: Any, which: str = "final") -> Path:
    """``checkpoints/<stage>/<which>`` of the run's last stage that trains: the run's model.

    ``which`` is ``final``, ``best`` or a ``step_*`` folder name. Raises FileNotFoundError, naming
    what exists, when that checkpoint is not complete.
    """
    path = Path(run_dir) / "checkpoints" / last_trained_stage(stages) / which
    if not (path / MARKER).exists():
        done = sorted(str(p.parent.relative_to(run_dir)) for p in Path(run_dir).glob(f"checkpoints/*/*/{MARKER}"))
        raise FileNotFoundError(f"no complete checkpoint {path}; complete ones: {', '.join(done) or 'none'}")
    return path


def load_consolidated(path: str | Path) -> dict:
    """A whole DCP checkpoint as one plain dict in this process (no process group needed)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "full.pt"
        with _quiet_single_process():
            dcp_to_torch_save(str(path), str(out))
        state = torch.load(out, weights_only=False)
    if isinstance(state.get("trainer"), bytes):
        state["trainer"] = unpack(state["trainer"])
    return state


def export_model(path: str | Path, out: str | Path) -> Path:
    """Write the model weights and resolved config of a checkpoint to one ``torch.save`` file."""
    state = load_consolidated(path)
    torch.save({"model": state["model"], "config": state["trainer"]["config"], "step": state["trainer"]["step"]},
               out)
    return Path(out)


if __name__ == "__main__":  # python -m ups.training.checkpoint <checkpoint dir> <out.pt>
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m ups.training.checkpoint <checkpoints/NAME> <out.pt>")
    print(export_model(sys.argv[1], sys.argv[2]))


def load_eval_weights(path: str | Path) -> tuple[dict, str]:
    """The weights a run evaluates with from a checkpoint folder, and a description of their source.

    ``model.pt`` (written into ``final``) is the quick path; a run that averaged its weights (EMA)
    evaluated with the average, which only the full checkpoint holds, so that is consolidated here.
    """
    path = Path(path)
    state = load_consolidated(path)
    shadow = next((v["shadow"] for v in state.get("callbacks", {}).values() if isinstance(v, dict) and v.get("shadow")),
                  None)
    if shadow:
        return {**state["model"], **shadow}, f"{path} (EMA weights, as evaluated)"
    return state["model"], str(path)
