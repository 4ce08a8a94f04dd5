"""NextStep's options: who decides residual prediction, the relative loss, training noise."""

from __future__ import annotations

import torch
from torch import nn

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
