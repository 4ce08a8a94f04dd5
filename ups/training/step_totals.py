"""One reduction per optimizer step: everything the ranks must agree on, and everything the logs
need, travels in one all-reduce that the host reads once.

On a GPU every read of a tensor's value waits for the queued kernels, so a loop that checks the
loss, the gradient norm and a stop flag separately stalls the CPU three or more times a step and
cannot run ahead. Here the step's numbers stay on the device until one ``tolist()`` after the
backward pass, which then decides together: skip the update (a non-finite loss or gradient norm on
any rank), stop (a signal, a callback's request, the time budget), and what to log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ups.distributed.collectives import all_reduce_sum
from ups.training import signals

# Host-side flags: [stop requested, then one count per stop signal]
_N_FLAGS = 1 + len(signals.STOP_SIGNALS)


def stop_flags(stop_requested: bool) -> list[float]:
    """This rank's stop request and the stop signal it received, as numbers to sum over ranks."""
    own = signals.received() or 0
    return [float(stop_requested or own > 0)] + [float(own == s) for s in signals.STOP_SIGNALS]


@dataclass
class Agreed:
    """What all ranks decided from one reduction (identical on every rank)."""

    stop: bool
    signum: int  # the stop signal any rank received (the highest number if several), 0 for none
    nonfinite_loss: bool = False
    grad_norm: float = float("nan")
    loss: float = float("nan")  # the step's mean loss over ranks
    task_losses: dict[str, float] = field(default_factory=dict)  # tasks drawn this step, over all ranks' samples
    elapsed_s: float = float("nan")  # training time, mean over ranks: one clock for a time-based lr schedule


def agree(flags: Sequence[float]) -> Agreed:
    """Decode summed stop flags (:func:`stop_flags` summed over ranks)."""
    signum = max((int(s) for s, n in zip(signals.STOP_SIGNALS, flags[1:_N_FLAGS]) if n), default=0)
    return Agreed(stop=flags[0] > 0, signum=signum)


def agree_stop(stop_requested: bool, device: torch.device) -> Agreed:
    """The stop decision alone (between steps: at an epoch's start, after an evaluation)."""
    flags = torch.tensor(stop_flags(stop_requested), dtype=torch.float64, device=device)
    return agree(all_reduce_sum(flags).tolist())


class StepTotals:
    """Accumulates a step's numbers on the device: [loss, non-finite count, grad norm, per-task sums]."""

    def __init__(self, task_names: Sequence[str], device: torch.device, world_size: int):
        self.names, self.device, self.world_size = list(task_names), device, world_size
        self.sums = torch.zeros(3 + 2 * len(self.names), dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, per_task: dict[str, tuple[torch.Tensor, int]], accum_steps: int) -> None:
        """One micro-batch: its loss (a share of the step's), whether it is finite, and each task's loss."""
        loss = loss.detach().double()
        self.sums[0] += loss / accum_steps
        self.sums[1] += (~torch.isfinite(loss)).double()
        n = len(self.names)
        for name, (value, count) in per_task.items():
            i = self.names.index(name)
            self.sums[3 + i] += value * count
            self.sums[3 + n + i] += count

    def reduce(self, grad_norm: torch.Tensor, stop_requested: bool, elapsed_s: float = 0.0) -> Agreed:
        """Sum over ranks and read once: the only host sync of a step."""
        self.sums[2] = grad_norm.detach().double()  # the same on every rank (gradients are synchronised)
        # A host-to-device copy of a few numbers: it queues behind the step's kernels, waits for none.
        flags = torch.tensor(stop_flags(stop_requested) + [elapsed_s], dtype=torch.float64, device=self.device)
        values = all_reduce_sum(torch.cat([flags, self.sums])).tolist()
        out = agree(values[:_N_FLAGS])
        sums, n, w = values[_N_FLAGS + 1 :], len(self.names), self.world_size
        out.elapsed_s = values[_N_FLAGS] / w
        out.nonfinite_loss, out.grad_norm, out.loss = sums[1] > 0, sums[2] / w, sums[0] / w
        out.task_losses = {name: sums[3 + i] / sums[3 + n + i] for i, name in enumerate(self.names) if sums[3 + n + i]}
        return out


def batch_loss(
    objective: Any, model: nn.Module, batch: list[dict], device: torch.device
) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, int]], int]:
    """A micro-batch's loss: the objective's loss per task group, weighted by the group's share of
    the samples; also each task's (detached loss, samples) for the step's reduction, and the samples."""
    n_all = sum(len(b["y"]) for b in batch)
    total, per_task = None, {}
    for b in batch:
        b = to_device(b, device)
        loss = objective.loss(model, b)
        per_task[b["task"]] = (loss.detach().double(), len(b["y"]))
        # a batch of one task group (the sampler draws them so) is its loss as it is: weighting by
        # 1.0 and adding to a zero would only launch three more ops forward and two backward
        weighted = loss if len(b["y"]) == n_all else loss * (len(b["y"]) / n_all)
        if weighted.dtype not in (torch.float32, torch.float64):  # at least fp32, as the sum into fp32 made it
            weighted = weighted.float()
        total = weighted if total is None else total + weighted
    return (torch.zeros((), device=device) if total is None else total), per_task, n_all


def to_device(group: dict, device: torch.device) -> dict:
    """A task group of a batch with its tensors on ``device`` (asynchronous from pinned memory)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in group.items()}
