"""Next-frame prediction shared by the training loss and evaluation rollouts.

With ``trainer.residual`` the model predicts the change from the last context frame; steady tasks
(Darcy) map a coefficient to a solution, so there the model always predicts the field itself.
"""
from __future__ import annotations

import torch
from torch import nn


def predict_next(model: nn.Module, batch: dict, residual: bool) -> torch.Tensor:
    """The next normalised frame (B, P, C) for a batch already on the device.

    The batch holds ``task``, ``coords``, ``cond`` and either context fields ``x`` (B, P, k*C) or
    cached encoder latents ``z`` with the last context frame ``last`` (B, P, C).
    """
    if "z" in batch:
        out = model(batch["task"], None, batch["coords"], batch["cond"], latents=batch["z"]).float()
        last = batch["last"] if residual else None
    else:
        out = model(batch["task"], batch["x"], batch["coords"], batch["cond"]).float()
        # Time is outermost per point, so the last C values are the last context frame.
        last = batch["x"][..., -out.shape[-1]:] if residual else None
    return out if last is None else out + last.float()
