"""Rollout evaluation of any next-frame predictor, per task, agreed across ranks.

A predictor is a function ``predict(batch) -> (B, P, C)`` of a batch as the objectives see it
(``ups/objectives/base.py``) plus ``t``, the index of the frame it predicts, and ``channels``; a
bundled model's predictor returns its next m frames, ``(B, P, m*C)``, time outermost. The
model's objective, persistence and the training-mean field (``baselines.py``) are all predictors,
so they are scored by the same code. A predictor returning None does not apply to the task.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ups.data.datasets import TrajectoryDataset, task_keys
from ups.distributed.collectives import all_reduce_max, all_reduce_sum
from ups.evaluation.metrics import nrmse
from ups.evaluation.pdebench_metrics import MetricSums

Predictor = Callable[[dict], Optional[torch.Tensor]]


@torch.no_grad()
def rollout(
    predict: Predictor, batch: dict, traj: torch.Tensor, initial_step: int, teacher_forced: bool = False
) -> torch.Tensor | None:
    """Predict frames ``initial_step..T-1`` from the first ``initial_step`` true frames.

    ``traj`` is (B, T, P, C), normalised. Autoregressive (PDEBench's protocol): each prediction
    joins the context for the next; a predictor that returns m frames is called every m frames.
    ``teacher_forced``: the context is always the true frames and only the first frame of each
    prediction is kept, so every prediction is one step ahead. Returns (B, T - initial_step, P, C), or None if the
    predictor does not apply.
    """
    b, t, p, c = traj.shape
    window, preds, i = traj[:, :initial_step], [], initial_step
    while i < t:
        x = window.permute(0, 2, 1, 3).reshape(b, p, -1)  # (B, P, k*C), time outermost per point
        y = predict({**batch, "x": x, "t": i, "channels": c})
        if y is None:
            return None
        # (B, P, m*C) -> (B, m, P, C): a bundled predictor gives its next m frames at once.
        frames = y.reshape(b, p, -1, c).transpose(1, 2)[:, : 1 if teacher_forced else t - i]
        preds.append(frames.float())
        nxt = traj[:, i : i + frames.shape[1]] if teacher_forced else frames.to(window.dtype)
        window = torch.cat([window, nxt], dim=1)[:, -initial_step:]
        i += frames.shape[1]
    return torch.cat(preds, dim=1)


def _batches(ds: TrajectoryDataset, rank: int, world_size: int, batch_size: int):
    """This rank's share of the trajectories, in batches with 0/1 sample weights.

    Every rank runs the same number of batches (short ones padded with zero-weight repeats),
    because a sharded model gathers parameters collectively in each forward.
    """
    ids = list(range(rank, len(ds), world_size))
    per_rank = -(-len(ds) // world_size)
    weights = [1.0] * len(ids) + [0.0] * (per_rank - len(ids))
    ids += [0] * (per_rank - len(ids))
    for start in range(0, per_rank, batch_size):
        items = [ds[j] for j in ids[start : start + batch_size]]
        yield items, torch.tensor(weights[start : start + batch_size], dtype=torch.float64)


@torch.no_grad()
def evaluate(
    predict: Predictor,
    model: nn.Module | None,
    sets: Sequence[TrajectoryDataset],
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    batch_size: int = 16,
    rank: int = 0,
    world_size: int = 1,
    full: bool = False,
) -> dict:
    """Scores per task in physical units over the predicted frames (conditioning frames excluded).

    Always ``nrmse/<task>`` (autoregressive rollout) and ``nrmse/mean``. With ``full``, every
    PDEBench metric (``ups.evaluation.pdebench_metrics.METRICS``) as ``<metric>/<task>``, per channel
    as ``<metric>/<task>/<channel>``, the same one step ahead as ``one_step/<metric>/<task>``, and
    nRMSE against the rollout step as the list ``nrmse_t/<task>``; means over tasks as ``<metric>/mean``.
    Each sample weighs the same; each rank scores every ``world_size``-th trajectory and sums are
    all-reduced, so every rank returns the same numbers. ``model`` (if given) is put in eval mode.
    """
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    out: dict = {}
    for ds in sets:
        task = ds.task
        _, _, out_mean, out_std = (torch.as_tensor(a, device=device) for a in task.stats.arrays())
        keys = task_keys(task, device)
        n_pred = task.n_steps - task.initial_step
        sums = {
            mode: MetricSums(task.channels, n_pred, device, grid=task.grid)
            for mode in (("rollout", "one_step") if full else ())
        }
        total = torch.zeros(2, dtype=torch.float64, device=device)
        applies = True
        for items, w in _batches(ds, rank, world_size, batch_size):
            traj = torch.stack([it["traj"] for it in items]).to(device)
            batch = {**keys, "cond": torch.stack([it["cond"] for it in items]).to(device)}
            target = traj[:, task.initial_step :] * out_std + out_mean
            for mode in ("rollout", "one_step") if full else ("rollout",):
                with autocast():
                    pred = rollout(predict, batch, traj, task.initial_step, teacher_forced=mode == "one_step")
                if pred is None:
                    applies = False
                    break
                pred = pred * out_std + out_mean  # physical units
                if full:
                    sums[mode].update(pred, target, task.grid, weight=w.to(device))
                if mode == "rollout":
                    total += torch.stack([(nrmse(pred, target).double() * w.to(device)).sum(), w.sum().to(device)])
            if not applies:
                break
        if not applies:  # the same on every rank: it depends on the task alone
            continue
        total = all_reduce_sum(total)
        out[f"nrmse/{task.name}"] = float(total[0] / total[1].clamp_min(1))
        for mode, s in sums.items():
            s.load_state(all_reduce_sum(s.state()))
            s.max_err = all_reduce_max(s.max_err)
            prefix = "" if mode == "rollout" else "one_step/"
            for key, value in s.finalize().items():
                if key == "nrmse_t":
                    if mode == "rollout":
                        out[f"nrmse_t/{task.name}"] = value
                elif key != "n_samples":
                    metric, _, channel = key.partition("/")
                    if channel and task.channels == 1:
                        continue  # the same number as the task's own
                    name = f"/{task.family.channels[int(channel)]}" if channel else ""
                    out[f"{prefix}{metric}/{task.name}{name}"] = value
    _add_means(out, [ds.task.name for ds in sets])
    if model is not None:
        model.train(was_training)
    return out


def _add_means(out: dict, tasks: list[str]) -> None:
    """``<metric>/mean`` over the tasks; NaN unless every task has a number for it (a mean over a
    subset of tasks would not compare with a mean over all)."""
    groups: dict[str, list[float]] = {}
    for key, value in list(out.items()):
        head, _, task = key.rpartition("/")
        if task in tasks and isinstance(value, float):
            groups.setdefault(head, []).append(value)
    for head, values in groups.items():
        complete = len(values) == len(tasks) and all(v == v for v in values)
        out[f"{head}/mean"] = sum(values) / len(values) if complete else float("nan")
