"""The consistency stage: a student distilled from the diffusion stage's sampler, in 1–2 evaluations.

The student is a copy of the diffusion head's network, initialised from its trained weights when
the stage starts (Song et al. 2023), trained by consistency distillation
(``ups/generative/consistency.py``) against the frozen teacher's Heun steps on the same scaled
residuals, and sampled in ``steps`` evaluations (one jump, or one jump, re-noising to ``mid_sigma``
and a second jump) instead of the teacher's ``2 * steps - 1``.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from ups.generative import ConsistencyDistillation
from ups.objectives import latent_heads as programs
from ups.objectives.diffusion import Corrector


class ConsistencyCorrection(Corrector):
    """Consistency distillation of the ``teacher`` head into this stage's ``head``."""

    def __init__(
        self,
        teacher: str = "diffusion",
        steps: int = 1,
        mid_sigma: float = 1.0,
        n_levels: int = 18,
        samples: int = 1,
        residual: bool | None = None,
        head: str = "consistency",
    ):
        if int(steps) not in (1, 2):
            raise ValueError(f"steps must be 1 or 2, got {steps}")
        self.teacher, self.head, self.residual = str(teacher), str(head), residual
        self.steps, self.mid_sigma, self.n_levels = int(steps), float(mid_sigma), int(n_levels)
        if int(samples) < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.samples, self.per_sample = int(samples), self.steps

    @property
    def label(self) -> str:
        return f"consistency ({self.steps} step{'s' * (self.steps > 1)})"

    def build_head(self, model: nn.Module) -> nn.Module:
        teacher = model.stage_heads[self.teacher] if self.teacher in model.stage_heads else None
        if teacher is None:
            raise ValueError(
                f"teacher={self.teacher!r}: no stage of this run attaches a head of that name; run the "
                "diffusion stage first (stage=all), or keep it with stages.diffusion.steps=0"
            )
        return copy.deepcopy(teacher)

    def setup(self, model: nn.Module, batches: Sequence[dict]) -> None:
        with torch.no_grad():
            programs.call(
                model, batches[0], programs.copy_weights, src=lambda m: m.stage_heads[self.teacher], dst=self.head
            )

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return programs.call(
            model,
            batch,
            programs.distillation_loss,
            y=batch["y"],
            head=self.head,
            teacher=self.teacher,
            n_levels=self.n_levels,
        )

    def sample(self, net: nn.Module, noise: torch.Tensor, **conditioning) -> torch.Tensor:
        sigmas = (self.mid_sigma,) if self.steps == 2 else ()
        return ConsistencyDistillation(net.edm, self.n_levels).sample(net, noise, sigmas, **conditioning)
