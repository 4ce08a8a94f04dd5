"""Next-frame prediction shared by the training loss and evaluation rollouts.

For time-dependent tasks the model predicts the change from the last context frame, which is
small and similar across steps, so errors compound less over a rollout. Steady tasks (Darcy) map
a coefficient to a solution, so there the model predicts the field itself.
"""
from __future__ import annotations

import torch
from torch import nn


def predict_next(model: nn.Module, task: str, x: torch.Tensor, coords: torch.Tensor, cond: torch.Tensor,
                 residual: bool) -> torch.Tensor:
    """The next normalised frame (B, P, C) from context ``x`` (B, P, k*C) at the same points."""
    out = model(task, x, coords, cond).float()
    if residual:
        out = out + x[..., -out.shape[-1]:].float()  # time is outermost per point: last C values = last frame
    return out
