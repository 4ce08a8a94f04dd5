"""The random generators a training step can draw from (torch, CUDA, numpy, Python), saved and
restored together: a resumed run continues their sequences exactly. Checkpoints store them per
rank (:func:`rank_key`); the memory estimate before a stage's first step (``failures.py``)
restores them after its trial forward passes.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from ups.training.checkpoint import pack, unpack


def rng_state() -> dict:
    """Every random generator a step can draw from: torch's as a tensor, the others packed as JSON."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    other = {
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), py_gauss],
    }
    if torch.cuda.is_available():
        other["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return {"torch": torch.get_rng_state(), "other": pack(other)}


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved (CUDA's only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    other = unpack(state["other"])
    name, keys, pos, has_gauss, gauss = other["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = other["python"]
    random.setstate((version, tuple(internal), py_gauss))
    if "cuda" in other and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in other["cuda"]])


def rank_key(rank: int) -> str:
    """The checkpoint key of one rank's RNG state: DCP merges equal keys across ranks, so each gets its own."""
    return f"rank{rank}"
