"""The trivial predictors every results table shows beside the models (design notes §3b).

- **persistence**: the last context frame, repeated. Not defined for a steady task (the input is
  a coefficient, not the solution), so it is left out there.
- **training-mean field**: for each frame index, the mean over the training trajectories of that
  frame, per point and channel; for Darcy, the mean solution. At most the first 1024 training
  trajectories are averaged: the mean has converged long before that, and a full PDEBench split
  would cost a pass over all its files at the end of every run.
Both are predictors in the sense of ``ups.evaluation.evaluate`` and work in normalised units.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ups.data.datasets import TrajectoryDataset
from ups.data.tasks import TaskData


def persistence(batch: dict) -> torch.Tensor | None:
    """The last context frame; None for steady tasks."""
    if batch.get("steady"):
        return None
    return batch["x"][..., -batch["channels"] :]


class MeanField:
    """Per-frame mean of the training trajectories of each task, computed once."""

    def __init__(self, tasks: Sequence[TaskData], preload_max_gb: float = 2.0, max_samples: int = 1024):
        self.means = {}
        for task in tasks:
            ds = TrajectoryDataset(task, "train", max_samples, preload_max_gb=preload_max_gb)
            total = sum(ds[j]["traj"].double() for j in range(len(ds)))
            self.means[task.name] = (total / len(ds)).float()  # (T, P, C)

    def __call__(self, batch: dict) -> torch.Tensor:
        mean = self.means[batch["task"]][batch["t"]].to(batch["x"].device)
        return mean.expand(batch["x"].shape[0], *mean.shape)
