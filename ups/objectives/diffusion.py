"""The diffusion stage: a generative model of what the frozen operator gets wrong, in latent space.

For a window (context x, next frame y) of a time-dependent task, the residual is the true next
latent minus the operator's prediction ``z_pred = step(encode(x))``. The true next latent is the
encoder's latent of the true next context, which the decoder reads back only as well as the
autoencoder reconstructs; or, with ``invert_steps > 0``, the decoder's inverse of y:
``invert_steps`` Adam steps on ``|decode(z) - y|^2`` from ``z_pred`` (docs/stages.md measures both).
A :class:`~ups.models.heads.ResidualDenoiser` learns the residual's distribution given the
operator's prediction, the PDE parameters and the task, with EDM (``ups/generative/edm.py``) on
the residual divided by its per-task RMS (measured when the stage starts). At test time each rollout step
draws a residual with ``steps`` Heun steps and decodes ``prediction + residual``. Steady tasks have
no next latent; they sit the stage out and are predicted by the operator.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ups.generative import EDM
from ups.models.heads import ResidualDenoiser
from ups.objectives import latent_heads as programs
from ups.objectives.base import Objective
from ups.objectives.next_step import predict_next, predicts_change


def eval_generator(batch: dict, device: torch.device) -> torch.Generator:
    """Noise for evaluation: fixed per rollout step, so every evaluation of a model draws the same."""
    return torch.Generator(device=device).manual_seed(1_000_003 * int(batch.get("t", 0)) + 17)


class Corrector(Objective):
    """What the diffusion and consistency objectives share: corrected candidates and predictions."""

    head = "diffusion"
    table_role = "corrector"  # rows: corrected, mean of several, and test-time correction
    residual: bool | None = None  # None: the model says (its predict_change)
    samples = 1  # corrected samples averaged into the prediction (their mean estimates the conditional mean)
    per_sample = 1  # network evaluations to draw one corrected sample

    @property
    def evaluations(self) -> int:
        return 1 + self.samples * self.per_sample

    @property
    def label(self) -> str:
        """How the evaluation table names the corrector."""
        raise NotImplementedError

    def applies(self, steady: bool) -> bool:
        return not steady

    def sample(self, net: nn.Module, noise: torch.Tensor, **conditioning) -> torch.Tensor:
        """One scaled residual per noise sample, drawn with the head ``net``."""
        raise NotImplementedError

    def candidates(self, model: nn.Module, batch: dict, k: int) -> torch.Tensor:
        """(1 + k, B, P, C) normalised next frames: the operator's, then ``k`` corrected ones."""
        out = programs.call(
            model,
            batch,
            programs.corrected,
            head=self.head,
            sample=self.sample,
            k=k,
            generator=eval_generator(batch, batch["x"].device),
        ).float()
        if predicts_change(model, self.residual):
            out = out + batch["x"][..., -out.shape[-1] :].float()
        return out

    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor:
        if batch.get("steady", False):
            return predict_next(model, batch, self.residual)
        return self.candidates(model, batch, self.samples)[1:].mean(0)


class DiffusionResidual(Corrector):
    """EDM on the operator's latent residual. ``steps``: Heun steps of the test-time sampler."""

    def __init__(
        self,
        steps: int = 8,
        width: int | None = None,
        depth: int = 2,
        heads: int = 4,
        sigma_min: float = 0.002,
        sigma_max: float = 20.0,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        invert_steps: int = 0,
        invert_lr: float = 0.05,
        samples: int = 1,
        residual: bool | None = None,
        head: str = "diffusion",
    ):
        self.steps, self.residual, self.head, self.samples = int(steps), residual, str(head), int(samples)
        if int(invert_steps) < 0 or invert_lr <= 0 or self.samples < 1 or self.steps < 1:
            raise ValueError(
                f"need steps >= 1, samples >= 1, invert_steps >= 0 and invert_lr > 0, got {steps}, "
                f"{samples}, {invert_steps}, {invert_lr}"
            )
        self.target = {"invert_steps": int(invert_steps), "invert_lr": float(invert_lr)}
        self.edm = EDM(sigma_data=1.0, sigma_min=sigma_min, sigma_max=sigma_max, p_mean=p_mean, p_std=p_std)
        self.net_args = dict(width=width, depth=int(depth), heads=int(heads))
        self.per_sample = EDM.evaluations(self.steps)

    @property
    def label(self) -> str:
        return f"diffusion ({self.steps} Heun steps)"

    def refuses(self, strategy: str) -> str | None:
        if strategy == "fsdp2" and self.target["invert_steps"]:
            return (
                "invert_steps > 0 differentiates the decoder inside the forward, which FSDP2's backward "
                "hooks do not allow (they reshard the root's parameters mid-forward); set invert_steps=0 "
                "or use parallelism=ddp2"
            )
        return None

    def build_head(self, model: nn.Module) -> nn.Module:
        net = ResidualDenoiser(model.hidden, model.cond_dim, [model.task_key(t) for t in model.tasks], **self.net_args)
        # the noise schedule and the residual's definition travel with the network: the student reads them
        net.edm, net.target = self.edm, self.target
        return net

    def setup(self, model: nn.Module, batches: Sequence[dict]) -> None:
        with torch.no_grad():
            for b in batches:
                programs.call(model, b, programs.calibrate, y=b["y"], head=self.head)

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return programs.call(model, batch, programs.diffusion_loss, y=batch["y"], head=self.head)

    def sample(self, net: nn.Module, noise: torch.Tensor, **conditioning) -> torch.Tensor:
        return net.edm.sample(net, noise, self.steps, **conditioning)
