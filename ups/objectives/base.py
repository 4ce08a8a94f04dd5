"""The interface every objective implements."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Objective:
    """A stage's loss and its next-frame prediction.

    Batches are one task's samples on the device: ``task``, ``coords``, ``cond``, ``grid``,
    ``steady``, the target frames ``y`` (B, P, horizon*C, time outermost) in normalised units, and
    either the context ``x`` (B, P, k*C) or cached latents ``z`` with the last context frame ``last``.

    An objective that trains a network of its own on top of a frozen latent model names it in
    ``head``: :meth:`build_head` makes it once per run, before the model is wrapped, and the
    trainer then freezes every other group of the model for the stage.
    """

    # Future frames each training window must hold (the trainer builds its windows so); by task name
    # when they differ (a bundled model's frames per call, ups.objectives.bind_bundle), 1 for others.
    horizon: int | dict[str, int] = 1
    # Whether the objective trains a model that predicts several frames per call (a latent model's
    # ``bundle``); ups.objectives.bind_bundle refuses the others with a config error.
    bundles: bool = False
    head: str | None = None  # the network it trains in the model's stage_heads; None: the model's own groups
    evaluations: int = 1  # network evaluations per predicted frame (the evaluation table's NFE)
    # The rows this stage gets in the end-of-run stage table, by the name its builder is registered
    # under in ups/evaluation/stage_table.py: "operator" (the last such stage is the operator row),
    # "corrector", "steady_prior"; a role nobody registered gets one generic row.
    table_role: str = "operator"

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """A scalar: the mean loss over the batch's samples (the trainer weights tasks by sample count)."""
        raise NotImplementedError

    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The next normalised frame (B, P, C), as evaluation rolls it out."""
        raise NotImplementedError

    def applies(self, steady: bool) -> bool:
        """Whether the stage trains on tasks of this kind (steady or time-dependent); others sit it out."""
        return True

    def refuses(self, strategy: str) -> str | None:
        """Why the objective cannot run under a data-parallel ``strategy`` (single, ddp, fsdp2), or None."""
        return None

    def build_head(self, model: nn.Module) -> nn.Module | None:
        """The network to attach as ``stage_heads[self.head]`` of the unwrapped model."""
        return None

    def setup(self, model: nn.Module, batches: Sequence[dict]) -> None:
        """Called on every rank, with the same fixed batches, when the stage starts at step 0 (not on
        resume: what it sets lives in the checkpoint), e.g. to initialise a head from another's weights."""
