"""Multi-step training: unroll the model on its own predictions for a few steps and fit every step.

Teacher-forced next-step training never shows the model its own errors, so a rollout drifts off the
data it was trained on. Unrolling ``steps`` predictions, each fed back as the newest context frame,
trains on that drift:

- ``pushforward=False``: the loss is the mean MSE over the unrolled steps, with gradients through
  every step (backpropagation through the rollout).
- ``pushforward=True`` (Brandstetter et al., 2022, "the pushforward trick"): a random number
  ``n`` in ``0 .. steps-1`` of predictions run without gradients (drawn per optimizer micro-batch
  from torch's RNG, so a resumed run draws the same), and only the next step's MSE trains. With
  ``n = 0`` that is plain next-step training on true context; otherwise the model learns to correct
  inputs that carry its own errors, at the cost of one step's backward.

``relative``: each step's MSE divided by the batch's mean square change over that step, as
:class:`~ups.objectives.NextStep`'s option (off by default for the same reason).

Steady tasks (Darcy) have no time axis: there the loss is the one-step MSE. Evaluation predicts one
step at a time, as for :class:`~ups.objectives.NextStep`.
"""

from __future__ import annotations

import torch
from torch import nn

from ups.objectives.base import Objective
from ups.objectives.next_step import NextStep, predict_next


class Unrolled(Objective):
    """``steps`` autoregressive predictions per window, fitted to the next ``steps`` true frames."""

    def __init__(self, steps: int = 2, pushforward: bool = False, residual: bool | None = None, relative: bool = False):
        if int(steps) < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.steps, self.pushforward, self.residual = int(steps), bool(pushforward), residual
        self.relative = bool(relative)

    def _mse(self, pred: torch.Tensor, target: torch.Tensor, batch: dict) -> torch.Tensor:
        mse = nn.functional.mse_loss(pred, target)
        return mse / NextStep.target_scale({**batch, "y": target}) if self.relative else mse

    @property
    def horizon(self) -> int:
        return self.steps

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        y = batch["y"]
        if batch.get("steady", False):
            return self._mse(self.predict(model, batch), y, batch)
        if "z" in batch:
            raise ValueError(
                "Unrolled needs the context fields to feed predictions back; it cannot train "
                "from cached latents (set the stage's latent_cache=false)"
            )
        c = y.shape[-1] // self.steps
        n = int(torch.randint(0, self.steps, ())) if self.pushforward else self.steps - 1
        x, losses = batch["x"], []
        for i in range(n + 1):
            trained = i == n or not self.pushforward
            with torch.set_grad_enabled(torch.is_grad_enabled() and trained):
                pred = self.predict(model, {**batch, "x": x})
            if trained:
                # The scale of step i is the true change over it, from the true frame before it.
                before = batch["x"][..., -c:] if i == 0 else y[..., (i - 1) * c : i * c]
                losses.append(self._mse(pred, y[..., i * c : (i + 1) * c], {**batch, "x": before}))
            x = torch.cat([x[..., c:], pred.to(x.dtype)], dim=-1)  # drop the oldest frame, append the prediction
        return torch.stack(losses).mean()

    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return predict_next(model, batch, self.residual)
