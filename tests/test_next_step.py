"""NextStep's options: who decides residual prediction, the relative loss, training noise."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ups.data.datasets import metric_weights
from ups.data.stats import Stats
from ups.evaluation.metrics import nrmse
from ups.objectives import NextStep


class Constant(nn.Module):
    """Predicts zeros; ``predict_change`` as a model would declare it."""

    def __init__(self, predict_change: bool):
        super().__init__()
        self.predict_change = predict_change
        self.seen: list[torch.Tensor] = []

    def forward(self, task, x, coords, cond, grid=None, latents=None):
        self.seen.append(x)
        return torch.zeros(x.shape[0], x.shape[1], 1)


def _batch(steady: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, generator=g)  # 3 context frames of 1 channel
    return {
        "task": "t",
        "x": x,
        "y": x[..., -1:] + 0.1 * torch.randn(2, 5, 1, generator=g),
        "coords": torch.zeros(1, 5, 1),
        "cond": torch.zeros(2, 4),
        "steady": steady,
    }


def test_residual_left_open_follows_the_model_and_can_be_forced() -> None:
    batch = _batch()
    last = batch["x"][..., -1:]
    assert torch.equal(NextStep().predict(Constant(True), batch), last)
    assert torch.equal(NextStep().predict(Constant(False), batch), torch.zeros_like(last))
    assert torch.equal(NextStep(residual=False).predict(Constant(True), batch), torch.zeros_like(last))
    steady = _batch(steady=True)  # a steady task never adds the input
    assert torch.equal(NextStep().predict(Constant(True), steady), torch.zeros_like(last))


def test_relative_loss_divides_by_the_scale_of_the_change_or_the_steady_field() -> None:
    batch, model = _batch(), Constant(True)
    change = batch["y"] - batch["x"][..., -1:]
    plain = NextStep().loss(model, batch)
    torch.testing.assert_close(plain, change.pow(2).mean())
    torch.testing.assert_close(NextStep(relative=True).loss(model, batch), torch.tensor(1.0))
    steady = _batch(steady=True)
    torch.testing.assert_close(NextStep(relative=True).loss(model, steady), torch.tensor(1.0))


def test_noise_perturbs_the_context_in_training_only_and_never_a_steady_input() -> None:
    batch, model = _batch(), Constant(True)
    NextStep(noise=0.5).loss(model, batch)
    assert not torch.equal(model.seen[-1], batch["x"])
    NextStep(noise=0.5).predict(model, batch)
    assert torch.equal(model.seen[-1], batch["x"])
    steady = _batch(steady=True)
    NextStep(noise=0.5).loss(model, steady)
    assert torch.equal(model.seen[-1], steady["x"])


def test_change_scaled_noise_follows_each_channels_step_change() -> None:
    """noise_scale=change: per channel, noise times the RMS change over one step, on every context frame."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 4000, 6, generator=g)  # 3 context frames of 2 channels
    y = x[..., -2:] + torch.tensor([0.1, 1.0]) * torch.randn(4, 4000, 2, generator=g)
    batch = {"task": "t", "x": x, "y": y, "coords": torch.zeros(1, 4000, 1), "cond": torch.zeros(4, 4)}
    added = NextStep(noise=0.5, noise_scale="change").context_noise(batch).unflatten(-1, (3, 2))
    spread = added.std(dim=(0, 1))  # (frame, channel)
    torch.testing.assert_close(spread, torch.tensor([[0.05, 0.5]] * 3), rtol=0.03, atol=0)
    assert added[..., 0, :].flatten().dot(added[..., 1, :].flatten()).abs() < 0.05 * added[..., 0, :].norm() ** 2
    absolute = NextStep(noise=0.5).context_noise(batch).std(dim=(0, 1))
    torch.testing.assert_close(absolute, torch.full((6,), 0.5), rtol=0.03, atol=0)
    with pytest.raises(ValueError, match="noise_scale"):
        NextStep(noise=0.5, noise_scale="relative")


def test_metric_weights_count_each_channel_as_the_nrmse_does() -> None:
    """The same error in normalised units on a density-like channel (mean 1, spread 0.1) and a
    velocity-like one (mean 0): the metric's squared nRMSE ratio is the weights' ratio."""
    mean, std = torch.tensor([1.0, 0.0]), torch.tensor([0.1, 0.2])
    task = SimpleNamespace(stats=Stats([0.0, 0.0], [1.0, 1.0], mean.tolist(), std.tolist()))
    w = metric_weights(task)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))
    g = torch.Generator().manual_seed(0)
    target = mean + std * torch.randn(4, 1, 4096, 2, generator=g)  # (B, T, P, C) in physical units
    sq = []
    for c in (0, 1):
        err = torch.zeros(2)
        err[c] = 0.05 * std[c]  # 0.05 in normalised units
        sq.append(nrmse(target + err, target).mean() ** 2)
    torch.testing.assert_close(sq[0] / sq[1], w[0] / w[1], rtol=0.05, atol=0)
    assert w[0] / w[1] < 0.02  # a hundredth, give or take the sample


def _two_channel_batch() -> dict:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 6, generator=g)  # 3 context frames of 2 channels
    return {
        "task": "t",
        "x": x,
        "y": x[..., -2:] + torch.tensor([0.1, 1.0]) * torch.randn(2, 5, 2, generator=g),
        "coords": torch.zeros(1, 5, 1),
        "cond": torch.zeros(2, 4),
        "steady": False,
        "channel_weights": torch.tensor([1.0, 1.0]),
    }


class Still(nn.Module):
    """Predicts no change, for two channels."""

    predict_change = True

    def forward(self, task, x, coords, cond, grid=None, latents=None):
        return torch.zeros(x.shape[0], x.shape[1], 2)


def test_metric_weighted_loss_weighs_the_errors_and_the_scale_per_channel() -> None:
    batch, model = _two_channel_batch(), Still()
    change = batch["y"] - batch["x"][..., -2:]
    # all ones: the plain loss, to the last bit
    assert torch.equal(NextStep(metric_weights=True).loss(model, batch), NextStep().loss(model, batch))
    only_first = {**batch, "channel_weights": torch.tensor([2.0, 0.0])}
    torch.testing.assert_close(NextStep(metric_weights=True).loss(model, only_first), change[..., 0].pow(2).mean())
    # relative: the scale is weighted the same way, so predicting no change still scores 1
    torch.testing.assert_close(NextStep(metric_weights=True, relative=True).loss(model, only_first), torch.tensor(1.0))
    assert NextStep(relative=True).loss(model, only_first) == NextStep(relative=True).loss(model, batch)
