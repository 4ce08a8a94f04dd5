"""Test-time correction (TTC): per rollout step, several corrected candidates, the best by physics.

A corrector objective (diffusion or consistency stage) proposes ``candidates`` corrected next
frames besides the operator's own prediction; each is scored on its decoded fields, in physical
units, by the family's physics reward (``ups/evaluation/rewards.py``: conservation, positivity,
boundary conditions) against the previous frame, and each sample keeps its best-scoring one. The
uncorrected prediction is always a candidate, so TTC never keeps a frame that scores worse than it.
Steady tasks keep the corrector's own prediction (it has no candidates for them).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ups.data.tasks import TaskData
from ups.evaluation.rewards import physics_reward
from ups.objectives.diffusion import Corrector


def physical(task: TaskData, frames: torch.Tensor, role: str) -> torch.Tensor:
    """Normalised (..., C) frames in physical units; ``role`` "in" (context) or "out" (targets)."""
    in_mean, in_std, out_mean, out_std = (torch.as_tensor(a, device=frames.device) for a in task.stats.arrays())
    mean, std = (in_mean, in_std) if role == "in" else (out_mean, out_std)
    return frames.float() * std + mean


class TestTimeCorrection:
    """A predictor (``ups.evaluation.evaluate``) choosing among a corrector's candidates per sample.

    ``stats`` accumulates, per task, the samples scored and how often the uncorrected prediction won.
    """

    __test__ = False  # not a pytest class, despite its name

    def __init__(self, corrector: Corrector, model: nn.Module, tasks: Sequence[TaskData], candidates: int = 4):
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        self.corrector, self.model, self.k = corrector, model, int(candidates)
        self.tasks = {t.name: t for t in tasks}
        self.evaluations = 1 + self.k * corrector.per_sample
        self.stats: dict[str, dict[str, float]] = {}

    def choose(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(chosen (B, P, C), rewards (1 + K, B), index of the chosen candidate (B,))."""
        task = self.tasks[batch["task"]]
        cands = self.corrector.candidates(self.model, batch, self.k)  # (1 + K, B, P, C), normalised
        c = cands.shape[-1]
        prev = physical(task, batch["x"][..., -c:], "in")
        rewards = torch.stack(
            [
                physics_reward(task.family, prev, physical(task, cand, "in"), task.grid, task.family.domain, task.dt)
                for cand in cands
            ]
        )
        best = rewards.argmax(0)  # ties go to the first: the uncorrected prediction
        chosen = cands.gather(0, best[None, :, None, None].expand(1, *cands.shape[1:]))[0]
        s = self.stats.setdefault(task.name, {"samples": 0, "kept_uncorrected": 0, "reward_gain": 0.0})
        s["samples"] += len(best)
        s["kept_uncorrected"] += int((best == 0).sum())
        s["reward_gain"] += float((rewards.max(0).values - rewards[0]).sum())
        return chosen, rewards, best

    def __call__(self, batch: dict) -> torch.Tensor:
        if batch.get("steady", False):
            return self.corrector.predict(self.model, batch)
        return self.choose(batch)[0]
