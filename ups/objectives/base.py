"""The interface every objective implements."""
from __future__ import annotations

import torch
from torch import nn


class Objective:
    """A stage's loss and its next-frame prediction.

    Batches are one task's samples on the device: ``task``, ``coords``, ``cond``, ``grid``,
    ``steady``, the target frames ``y`` (B, P, horizon*C, time outermost) in normalised units, and
    either the context ``x`` (B, P, k*C) or cached latents ``z`` with the last context frame ``last``.
    """

    horizon: int = 1  # future frames each training window must hold (the trainer builds its windows so)

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """A scalar: the mean loss over the batch's samples (the trainer weights tasks by sample count)."""
        raise NotImplementedError

    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The next normalised frame (B, P, C), as evaluation rolls it out."""
        raise NotImplementedError
