"""Reading a latent cache (``ups.data.latent_cache`` builds it): the folder format's validity check
and the datasets that serve its windows in place of a WindowDataset's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ups.data.datasets import MultiTaskDataset, WindowDataset

CACHE_VERSION = 1  # bump when the folder layout or the meaning of a field changes
MARKER = "meta.json"


def read_meta(path: Path) -> dict | None:
    """The folder's meta.json, or None when it is missing or unreadable."""
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_complete(path: Path, key: str | None = None) -> bool:
    """A complete cache: marker present, right version/key, and array files of the recorded sizes."""
    meta = read_meta(path)
    if meta is None or meta.get("version") != CACHE_VERSION or (key is not None and meta.get("key") != key):
        return False
    try:
        return all((path / f).stat().st_size == n for f, n in meta["file_sizes"].items())
    except (OSError, KeyError, AttributeError):
        return False


class LatentWindowDataset(torch.utils.data.Dataset):
    """Items of a cache, in the same index order as the WindowDataset it was built from.

    ``__getitem__(i)`` gives ``z`` [L, H] (float32), ``y`` [P, C] (the target frame), ``last`` [P, C]
    (the last context frame, for residual prediction) and ``cond``. ``windows`` supplies the task
    (grid, name) and is checked against the cache; build it with ``preload_max_gb=0`` to avoid
    loading the data a second time. Memory maps open lazily, once per process (DataLoader workers).
    """

    def __init__(self, cache_dir: Path, windows: WindowDataset, key: str | None = None):
        self.cache_dir, self.task = Path(cache_dir), windows.task
        if not is_complete(self.cache_dir, key):
            raise FileNotFoundError(
                f"{self.cache_dir} is not a complete latent cache" + (f" with key {key}" if key else "")
            )
        self.meta = read_meta(self.cache_dir)
        expect = {
            "task": windows.task.name,
            "n_windows": len(windows),
            "per_traj": windows.per_traj,
            "initial_step": windows.task.initial_step,
        }
        wrong = {k: (self.meta[k], v) for k, v in expect.items() if self.meta[k] != v}
        if wrong:
            raise ValueError(f"latent cache {self.cache_dir} does not match the windows (cache, windows): {wrong}")
        self.per_traj, self.k = windows.per_traj, windows.task.initial_step
        self._arrays: tuple[np.ndarray, ...] | None = None
        self._pid = -1

    def _open(self) -> tuple[np.ndarray, ...]:
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = tuple(
                np.load(self.cache_dir / f, mmap_mode="r") for f in ("z.npy", "frames.npy", "cond.npy")
            )
            self._pid = os.getpid()
        return self._arrays

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None, "_pid": -1}  # maps are per process

    def __len__(self) -> int:
        return self.meta["n_windows"]

    def __getitem__(self, index: int) -> dict:
        z_mm, frames, cond = self._open()
        j, start = divmod(index, self.per_traj)
        z = np.array(z_mm[index])  # copy: torch wants writable memory, the map is read-only
        zt = (
            torch.from_numpy(z.view(np.int16)).view(torch.bfloat16)
            if self.meta["z_dtype"] == "bfloat16"
            else torch.from_numpy(z)
        )
        return {
            "z": zt.float(),
            "y": torch.from_numpy(np.array(frames[j, start + self.k])),
            "last": torch.from_numpy(np.array(frames[j, start + self.k - 1])),
            "cond": torch.from_numpy(np.array(cond[j])),
        }


class MultiTaskLatentDataset(MultiTaskDataset):
    """MultiTaskDataset over LatentWindowDatasets: same ``sizes()``/indexing, batches carry ``z`` not ``x``."""

    def __init__(self, datasets: Sequence[LatentWindowDataset]):
        super().__init__(datasets)  # type: ignore[arg-type]

    def collate(self, items: list[dict]) -> list[dict]:
        """One batch dict per task present: ``task``, ``z``, ``y``, ``last``, ``cond``, ``coords``."""
        out = []
        for t in sorted({it["task_index"] for it in items}):
            group = [it for it in items if it["task_index"] == t]
            batch = {name: torch.stack([g[name] for g in group]) for name in ("z", "y", "last", "cond")}
            out.append({**batch, **self.keys[t]})
        return out
