"""Per-task validation/test nRMSE from autoregressive rollouts, agreed across ranks."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, Sequence

import torch
from torch import nn

from ups.data.datasets import TrajectoryDataset
from ups.distributed.collectives import all_reduce_sum
from ups.evaluation.metrics import nrmse, rollout


@torch.no_grad()
def evaluate(model: nn.Module, sets: Sequence[TrajectoryDataset], device: torch.device,
             autocast: Callable[[], AbstractContextManager], batch_size: int = 16,
             rank: int = 0, world_size: int = 1, residual: bool = True) -> dict[str, float]:
    """``nrmse/<task>`` for every task and their mean ``nrmse/mean``.

    Each rank scores every ``world_size``-th trajectory and the sums are all-reduced, so all ranks
    return the same numbers. Every rank runs the same number of batches (short ones are padded with
    zero-weight repeats), because a sharded model gathers parameters collectively in each forward. Predictions are denormalised first: nRMSE is in physical units, over
    the predicted frames only (the context frames are excluded, as PDEBench does at HEAD).
    """
    was_training = model.training
    model.eval()
    out = {}
    for ds in sets:
        task = ds.task
        _, _, out_mean, out_std = (torch.as_tensor(a, device=device) for a in task.stats.arrays())
        coords = torch.as_tensor(task.coords, device=device)[None]
        total = torch.zeros(2, dtype=torch.float64, device=device)
        ids = list(range(rank, len(ds), world_size))
        per_rank = -(-len(ds) // world_size)
        weights = [1.0] * len(ids) + [0.0] * (per_rank - len(ids))
        ids += [0] * (per_rank - len(ids))
        for start in range(0, per_rank, batch_size):
            items = [ds[j] for j in ids[start: start + batch_size]]
            w = torch.tensor(weights[start: start + batch_size], device=device)
            traj = torch.stack([it["traj"] for it in items]).to(device)
            cond = torch.stack([it["cond"] for it in items]).to(device)
            with autocast():
                pred = rollout(model, task.name, traj, cond, coords, task.initial_step,
                               residual and not task.family.steady)
            target = traj[:, task.initial_step:] * out_std + out_mean
            scores = nrmse(pred * out_std + out_mean, target)
            total += torch.stack([(scores * w).sum(), w.sum()]).double()
        total = all_reduce_sum(total)
        out[f"nrmse/{task.name}"] = float(total[0] / total[1].clamp_min(1))
    out["nrmse/mean"] = sum(out.values()) / len(sets)
    model.train(was_training)
    return out
