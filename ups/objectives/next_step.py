"""Next-frame regression: MSE between the predicted and the true next frame, in normalised units.

With ``residual`` the model predicts the change from the last context frame (``None``: as the model
says, its ``predict_change``); steady tasks (Darcy) map a coefficient to a solution, so there the
model always predicts the field itself.
"""

from __future__ import annotations

import torch
from torch import nn

from ups.models.spec import unwrap
from ups.objectives.base import Objective


def predicts_change(model: nn.Module, residual: bool | None) -> bool:
    """Whether predictions add the last context frame: ``residual`` if set, else the model's choice."""
    return bool(getattr(unwrap(model), "predict_change", False)) if residual is None else bool(residual)


def change_base(model: nn.Module, x: torch.Tensor, channels: int, residual: bool | None = None) -> torch.Tensor | float:
    """What a prediction adds to the model's decoded output: the last context frame of ``x`` (float) for a
    model that predicts the change, else 0. Code that decodes latents itself adds it as predict does."""
    return x[..., -channels:].float() if predicts_change(model, residual) else 0.0


def frames_per_call(model: nn.Module) -> dict[str, int]:
    """Frames the model predicts per call, by task, where that is more than one (a latent model's
    ``bundle``); empty for a model that predicts one frame."""
    return {t: m for t, m in getattr(unwrap(model), "frames_per_call", {}).items() if m > 1}


def predict_next(model: nn.Module, batch: dict, residual: bool | None) -> torch.Tensor:
    """The next normalised frame (B, P, C) for a batch already on the device; a bundled model's next
    m frames (B, P, m*C), time outermost."""
    residual = predicts_change(model, residual) and not batch.get("steady", False)
    grid = batch.get("grid")
    if "z" in batch:
        out = model(batch["task"], None, batch["coords"], batch["cond"], latents=batch["z"], grid=grid).float()
        last = batch["last"] if residual else None
    else:
        out = model(batch["task"], batch["x"], batch["coords"], batch["cond"], grid=grid).float()
        # Time is outermost per point, so the last C values are the last context frame.
        c = out.shape[-1] // frames_per_call(model).get(batch["task"], 1)
        last = batch["x"][..., -c:] if residual else None
    if last is None:
        return out
    return out + last.float().repeat(1, 1, out.shape[-1] // last.shape[-1])  # to every frame of a bundle


NOISE_SCALES = ("absolute", "change")


class NextStep(Objective):
    """One-step teacher-forced MSE; evaluation rolls the same prediction out autoregressively.

    ``residual``: ``None`` (default) lets the model decide (the latent surrogate predicts the change,
    docs/results.md); ``true``/``false`` force it for any model. ``noise``: the standard deviation
    (normalised units) of Gaussian noise added to the context frames while training, so the model
    learns to map slightly wrong inputs to the true next frame, as its own rollouts will feed it
    (DPOT's auto-regressive denoising); steady tasks and cached latents train without it.
    ``noise_scale``: ``absolute`` (the default) draws it at ``noise`` in normalised units for every
    task; ``change`` at ``noise`` times each channel's RMS change over one step in the batch, so a
    family whose frames change little gets as little noise as a rollout's errors would bring it, and
    one that changes a lot as much (docs/results.md, stage 10: 0.01 absolute was half a step's
    change on Burgers and a twentieth on 3D CFD).
    ``relative``: the MSE divided by :meth:`target_scale`, so a family whose frames change little
    per step weighs as much as one that changes a lot. The scale is the batch's, so a batch split
    over ranks or micro-batches no longer gives one process's loss exactly (the world-size
    equivalence of docs/distributed.md needs it off, the default); a per-sample scale, which keeps
    that equivalence, trained worse (docs/results.md). ``metric_weights``: each channel's squared error
    (and, with ``relative``, its part of the scale) weighted as PDEBench's nRMSE weighs it
    (:func:`ups.data.datasets.metric_weights`): a density of mean 1 then counts a hundredth of a
    velocity, as it does in the metric, instead of as much (normalisation gave both spread 1).
    """

    bundles = True  # its windows then hold every frame the model predicts (ups.objectives.bind_bundle)

    def __init__(
        self,
        residual: bool | None = None,
        noise: float = 0.0,
        relative: bool = False,
        metric_weights: bool = False,
        noise_scale: str = "absolute",
    ):
        self.residual = residual
        self.noise = float(noise)
        self.noise_scale = str(noise_scale)
        if self.noise_scale not in NOISE_SCALES:
            raise ValueError(f"noise_scale must be one of {', '.join(NOISE_SCALES)}, got {noise_scale!r}")
        self.relative = bool(relative)
        self.metric_weights = bool(metric_weights)
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        frames = frames_per_call(model).get(batch["task"], 1)
        weights = batch["channel_weights"].repeat(frames) if self.metric_weights else None
        scale = self.target_scale(batch, frames, weights) if self.relative else None  # from the clean frames
        if self.noise > 0 and "x" in batch and not batch.get("steady", False):
            batch = {**batch, "x": batch["x"] + self.context_noise(batch, frames)}
        pred = self.predict(model, batch)
        if weights is None:
            mse = torch.nn.functional.mse_loss(pred, batch["y"])
        else:
            mse = ((pred - batch["y"]).square() * weights).mean()
        return mse if scale is None else mse / scale

    def context_noise(self, batch: dict, frames: int = 1) -> torch.Tensor:
        """Gaussian noise for the context frames ``x``, independent per frame, point and channel, at
        ``noise`` (absolute) or ``noise`` times the channel's RMS change from the last context frame to
        the first target frame in this batch (change)."""
        x = batch["x"]
        if self.noise_scale == "absolute":
            return self.noise * torch.randn_like(x)
        c = batch["y"].shape[-1] // frames
        change = (batch["y"][..., :c] - x[..., -c:]).float().square().mean((0, 1)).sqrt()  # [c]
        return (torch.randn_like(x).unflatten(-1, (-1, c)) * (self.noise * change).to(x.dtype)).flatten(-2)

    @staticmethod
    def target_scale(batch: dict, frames: int = 1, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's mean square of what it asks the model to learn: the change from the last context
        frame to each of the ``frames`` target frames, or the field itself for a steady task.
        ``relative`` divides by it so every task weighs the same; ``weights``: per output channel and frame,
        as the loss weighs the errors."""
        y = batch["y"].float()
        if batch.get("steady", False):
            sq = y.pow(2)
        else:
            c = y.shape[-1] // frames
            last = (batch["x"][..., -c:] if "x" in batch else batch["last"]).float()
            sq = (y - last.repeat(1, 1, frames)).pow(2)
        return (sq if weights is None else sq * weights).mean().clamp_min(1e-8)

    def predict(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return predict_next(model, batch, self.residual)
