"""Checkpoints in the run directory: one folder per save, valid only once its marker exists.

Layout::

    <run_dir>/checkpoints/step_00000400/state.pt + COMPLETE
    <run_dir>/checkpoints/best/...   (lowest validation nRMSE so far)
    <run_dir>/checkpoints/final/...  (end of training)

A folder is written under a temporary name and renamed into place after its marker, so a crash
mid-save leaves nothing that :meth:`Checkpointer.latest` would load.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

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


class Checkpointer:
    """Saves and finds complete checkpoints; only the main process writes."""

    def __init__(self, run_dir: str | Path, keep_last_k: int = 2, is_main: bool = True):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last_k, self.is_main = keep_last_k, is_main

    def save(self, state: dict, name: str) -> Path | None:
        """Write ``state`` to ``checkpoints/<name>`` atomically; prune old step folders."""
        if not self.is_main:
            return None
        final = self.root / name
        tmp = self.root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": state["step"], "stage": state.get("stage")}))
        (tmp / MARKER).touch()
        old = self.root / f".{name}.old"
        if final.exists():
            final.rename(old)  # keep the previous copy until the new one is in place
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        self._prune()
        return final

    def _steps(self) -> list[Path]:
        return sorted(p for p in self.root.glob("step_*") if (p / MARKER).exists())

    def _prune(self) -> None:
        for p in self._steps()[: -self.keep_last_k]:
            shutil.rmtree(p, ignore_errors=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint: the final one if training finished, else the last step."""
        steps = self._steps()
        candidates = steps + [p for p in (self.root / "final",) if (p / MARKER).exists()]
        if not candidates:
            return None
        # Prefer "final" over a step folder of the same step: it marks the stage as finished.
        return max(candidates, key=lambda p: json.loads((p / "meta.json").read_text())["step"]
                   + (0.5 if p.name == "final" else 0.0))

    @staticmethod
    def load(path: str | Path) -> dict[str, Any]:
        path = Path(path)
        if not (path / MARKER).exists():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
        return torch.load(path / "state.pt", weights_only=False, map_location="cpu")
