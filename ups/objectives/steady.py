"""The steady-prior stage: a dedicated map from coefficient data to the steady state.

For steady problems (Darcy: permeability a -> pressure u), the encoder's tokens of the
coefficient field go through the head, a latent operator of the model's own architecture
initialised from the trained operator's weights when the stage starts, and the frozen decoder
reads the solution at any point. Unlike the shared operator, it trains on steady tasks alone. At
inference it predicts every steady task; time-dependent tasks sit the stage out and keep the
operator's prediction.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from ups.objectives import latent_heads as programs
from ups.objectives.base import Objective
from ups.objectives.next_step import predict_next


class SteadyPrior(Objective):
    """MSE of the steady head's decoded solution; ``residual`` is the operator stage's setting."""

    table_role = "steady_prior"  # one row, on steady tasks only
    bundles = True  # it trains steady tasks only (one output); time-dependent ones keep the operator's bundle

    def __init__(self, head: str = "steady", residual: bool | None = None):
        self.head, self.residual = str(head), residual

    def applies(self, steady: bool) -> bool:
        return steady

    def build_head(self, model: nn.Module) -> nn.Module:
        return copy.deepcopy(model.operator)

    def setup(self, model: nn.Module, batches: Sequence[dict]) -> None:
        with torch.no_grad():
            programs.call(model, batches[0], programs.copy_weights, src=lambda m: m.operator, dst=self.head)

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return nn.functional.mse_loss(self.predict(model, batch), batch["y"])

    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor:
        if not batch.get("steady", False):
            return predict_next(model, batch, self.residual)
        return programs.call(model, batch, programs.steady_map, head=self.head).float()
