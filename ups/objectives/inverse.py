"""Latent-space consistency for the operator stage, and autoencoder pretraining (latent models).

- :class:`InverseConsistency` adds UPT's inverse losses to next-step training: the latent of a
  context decodes back to its newest frame (``decode_weight``), and the operator's predicted
  latent matches the encoder's latent of the true next context (``encode_weight``, target
  detached). Both make ``encode(next context) - step(encode(context))``, the residual the
  diffusion stage models, a residual of a latent space the decoder reads correctly.
- :class:`Autoencoder` trains encoder and decoder alone to reconstruct the newest context frame
  (for Darcy: the coefficient), so a later stage can freeze the encoder and read its latents from
  the cache (``stage=autoencoder_pretrain``).
Steady tasks have no next context: there InverseConsistency is plain next-step training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ups.objectives.base import Objective
from ups.objectives.latent_heads import call, next_context
from ups.objectives.next_step import change_base, predict_next


def _inverse_losses(
    model: nn.Module,
    task: str,
    x: Tensor,
    coords: Tensor,
    cond: Tensor,
    *,
    y: Tensor,
    decode_weight: float,
    encode_weight: float,
) -> Tensor:
    mse = nn.functional.mse_loss
    last = x[..., -y.shape[-1] :].float()
    # A model that predicts the change decodes the change: its frame is the decoded value plus the last
    # frame, in both losses (fitting the field itself there made rollouts double the field every step).
    base = change_base(model, x, y.shape[-1])
    z = model.encode(task, x, coords)
    z_next = model.step(task, z, cond)
    loss = mse(model.decode(task, z_next, coords).float() + base, y.float())
    if decode_weight:
        loss = loss + decode_weight * mse(model.decode(task, z, coords).float() + base, last)
    if encode_weight:
        target = model.encode(task, next_context(x, y.to(x.dtype)), coords).detach()
        loss = loss + encode_weight * mse(z_next.float(), target.float())
    return loss


def _reconstruct_only(model: nn.Module, task: str, x: Tensor, coords: Tensor, cond: Tensor, *, channels: int) -> Tensor:
    return model.decode(task, model.encode(task, x, coords), coords).float()


def _reconstruction(model: nn.Module, task: str, x: Tensor, coords: Tensor, cond: Tensor, *, channels: int) -> Tensor:
    return nn.functional.mse_loss(
        _reconstruct_only(model, task, x, coords, cond, channels=channels), x[..., -channels:].float()
    )


class InverseConsistency(Objective):
    """Next-step MSE plus the weighted inverse decoding and encoding losses."""

    def __init__(self, decode_weight: float = 0.5, encode_weight: float = 0.5):
        if decode_weight < 0 or encode_weight < 0:
            raise ValueError(f"weights must be >= 0, got decode_weight={decode_weight}, encode_weight={encode_weight}")
        self.decode_weight, self.encode_weight = float(decode_weight), float(encode_weight)

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        if batch.get("steady", False) or "z" in batch:
            return nn.functional.mse_loss(self.predict(model, batch), batch["y"])
        return call(
            model,
            batch,
            _inverse_losses,
            y=batch["y"],
            decode_weight=self.decode_weight,
            encode_weight=self.encode_weight,
        )

    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return predict_next(model, batch, residual=None)


class Autoencoder(Objective):
    """Reconstruction MSE of the newest context frame through encoder and decoder (no operator).

    For evaluation it predicts the next frame as the reconstruction of the newest one (persistence
    through the autoencoder), so the stage's validation nRMSE shows what the latents keep; steady
    tasks get the model's own prediction.
    """

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return call(model, batch, _reconstruction, channels=batch["y"].shape[-1])

    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor:
        if batch.get("steady", False):
            return predict_next(model, batch, residual=None)
        c = batch.get("channels") or batch["y"].shape[-1]
        return call(model, batch, _reconstruct_only, channels=c)
