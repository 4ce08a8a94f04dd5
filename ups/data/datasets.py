"""Torch datasets over tasks: next-step windows for training, whole trajectories for rollouts.

Fields are flattened to points, (T, *space, C) -> (P, T*C) with time outermost per point, with
their coordinates; every batch also carries the task's ``grid`` shape, so a grid model (FNO,
U-Net) views the same tensors as ``(B, C, *grid)`` (``ups.models.spec.points_to_grid``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ups.data.symmetry import Move
from ups.data.tasks import SampleId, TaskData


def normalise(task: TaskData, traj: np.ndarray) -> np.ndarray:
    """Scale a (T, *space, C) trajectory to zero mean, unit std per channel (per role for steady tasks)."""
    in_mean, in_std, out_mean, out_std = task.stats.arrays()
    out = (traj - in_mean) / in_std
    if task.family.steady:
        out[1:] = (traj[1:] - out_mean) / out_std
    return out.astype(np.float32)


def to_points(frames: np.ndarray) -> np.ndarray:
    """(T, *space, C) -> (P, T*C)."""
    t, c = frames.shape[0], frames.shape[-1]
    return np.moveaxis(frames.reshape(t, -1, c), 0, 1).reshape(-1, t * c)


PRELOAD_BLOCK_BYTES = 16 * 2**20  # stored bytes one bulk read may span while preloading (transient memory)


class _TrajectorySource:
    """Normalised trajectories of one split, in memory when small enough, else read per access.

    A split that fits ``preload_max_gb`` is read in one pass: one bulk read per field for each
    file's block of samples (``TrajectoryFile.read_many``), not one per field and sample; the
    blocks span at most the budget and ``PRELOAD_BLOCK_BYTES``. Otherwise every access reads only
    the frames it asks for.
    """

    def __init__(self, task: TaskData, ids: Sequence[SampleId], preload_max_gb: float, moves: Sequence[Move] = ()):
        self.task, self.moves = task, list(moves)
        # with moves, one item per (move, sample): every copy of every sample, copies outermost
        self.items = [(sid, move) for move in (self.moves or [None]) for sid in ids]
        self.ids = [sid for sid, _ in self.items]
        nbytes = len(self.items) * task.n_steps * task.coords.shape[0] * task.channels * 4
        budget = preload_max_gb * 2**30
        self._cache = self._preload(int(min(budget, PRELOAD_BLOCK_BYTES))) if nbytes <= budget else None

    def _preload(self, block_bytes: int) -> list[np.ndarray]:
        by_file: dict[int, list[int]] = {}
        for file_idx, i in dict.fromkeys(self.ids):
            by_file.setdefault(file_idx, []).append(i)
        loaded = {
            ((file_idx, i), move): normalise(self.task, traj)
            for file_idx, idx in by_file.items()
            for i, move, traj in self.task.files[file_idx].read_copies(idx, block_bytes, self.moves or [None])
        }
        return [loaded[item] for item in self.items]

    def frames(self, j: int, start: int, stop: int) -> np.ndarray:
        """Frames ``start:stop`` of trajectory ``j``, normalised; read lazily, only those frames are read."""
        # steady (Darcy): normalise tells the input frame from the solution by its position
        if self._cache is not None or self.task.family.steady:
            return self[j][start:stop]
        return self._read(j, start, stop)

    def __getitem__(self, j: int) -> np.ndarray:
        return self._cache[j] if self._cache is not None else self._read(j)

    def _read(self, j: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        (file_idx, i), move = self.items[j]
        return normalise(self.task, self.task.files[file_idx].read(i, start, stop, move))

    def __len__(self) -> int:
        return len(self.items)


class WindowDataset(Dataset):
    """Every (trajectory, start) window: ``initial_step`` context frames and the ``horizon`` frames
    after them (``y`` is (P, horizon*C), time outermost; steady tasks have one target whatever the horizon).

    ``copies``: every rotated and reflected copy of each trajectory that the task's physics allows
    (:meth:`TaskData.copies`) is a trajectory of the set too (``data.augment``; the training split)."""

    def __init__(self, task: TaskData, split: str, preload_max_gb: float = 2.0, horizon: int = 1, copies: bool = False):
        self.task = task
        self.horizon = 1 if task.family.steady else horizon
        self.per_traj = task.n_steps - task.initial_step - (self.horizon - 1)
        if self.per_traj < 1:
            raise ValueError(
                f"{task.name}: horizon {horizon} needs {task.initial_step + horizon} frames per "
                f"trajectory, but it has {task.n_steps} (after reduced_resolution_t)"
            )
        moves = task.copies() if copies else []  # the identity alone is the data as stored: no copies
        self.source = _TrajectorySource(task, task.splits[split], preload_max_gb, moves if len(moves) > 1 else [])
        self._conds = [task.cond(file_idx) for file_idx, _ in self.source.ids]

    def __len__(self) -> int:
        return len(self.source) * self.per_traj

    def __getitem__(self, index: int) -> dict:
        j, start = divmod(index, self.per_traj)
        k = self.task.initial_step
        frames = self.source.frames(j, start, start + k + self.horizon)  # a lazy read fetches only these
        return {
            "x": torch.from_numpy(to_points(frames[:k])),
            "y": torch.from_numpy(to_points(frames[k:])),
            "cond": torch.from_numpy(self._conds[j]),
        }


class TrajectoryDataset(Dataset):
    """Whole normalised trajectories (T, P, C) of one split, for autoregressive evaluation."""

    def __init__(self, task: TaskData, split: str, max_samples: int | None = None, preload_max_gb: float = 2.0):
        ids = task.splits[split][:max_samples] if max_samples else task.splits[split]
        self.task = task
        self.source = _TrajectorySource(task, ids, preload_max_gb)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, j: int) -> dict:
        traj = self.source[j]
        t, c = traj.shape[0], traj.shape[-1]
        return {
            "traj": torch.from_numpy(traj.reshape(t, -1, c)),
            "cond": torch.from_numpy(self.task.cond(self.source.ids[j][0])),
        }


class MultiTaskDataset(Dataset):
    """Indexes several window datasets by (task index, window index), as the sampler yields them."""

    def __init__(self, datasets: Sequence[WindowDataset]):
        self.datasets = list(datasets)
        # What every batch of a task shares (name, coordinates, channel weights): built once, not per batch.
        self.keys = [task_keys(d.task) for d in self.datasets]

    def sizes(self) -> list[int]:
        return [len(d) for d in self.datasets]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        t, i = key
        return {"task_index": t, **self.datasets[t][i]}

    def collate(self, items: list[dict]) -> list[dict]:
        """Group a micro-batch by task: one batch dict per task present, with its shared grid."""
        out = []
        for t in sorted({it["task_index"] for it in items}):
            group = [it for it in items if it["task_index"] == t]
            out.append(
                {
                    "x": torch.stack([g["x"] for g in group]),
                    "y": torch.stack([g["y"] for g in group]),
                    "cond": torch.stack([g["cond"] for g in group]),
                    **self.keys[t],
                }
            )
        return out


def task_keys(task: TaskData, device: torch.device | str | None = None) -> dict:
    """What every batch of a task carries besides its tensors: name, grid, coordinates, steadiness,
    and each output channel's weight in PDEBench's nRMSE (:func:`metric_weights`); the tensors on
    ``device`` (None: where they are made, the CPU, for a loader to move)."""
    return {
        "task": task.name,
        "coords": torch.from_numpy(task.coords)[None].to(device),
        "grid": task.grid,
        "steady": task.family.steady,
        "channel_weights": metric_weights(task).to(device),
    }


def metric_weights(task: TaskData) -> torch.Tensor:
    """[C] weights that make a squared error in normalised units count per channel as PDEBench's nRMSE
    counts it: the metric divides a channel's error by the channel's RMS in physical units, so an error
    e (normalised) weighs std^2 / (mean^2 + std^2) of the same error on a zero-mean channel. A density
    of mean 1 and spread 0.1 weighs 1/100 of a velocity. Scaled to mean 1 over the channels."""
    _, _, mean, std = (torch.as_tensor(a, dtype=torch.float32) for a in task.stats.arrays())
    w = std.square() / (mean.square() + std.square())
    return w / w.mean()
