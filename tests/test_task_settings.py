"""``model.by_task``: per task, its own frames per call (latent) and fewer context frames read (latent, FNO)."""

from __future__ import annotations

import logging

import pytest
import torch

from ups.models import LatentSurrogate, TaskIO
from ups.models.fno import FNO
from ups.models.task_settings import task_settings

TASKS = {
    "a1": TaskIO(10, 2, 1, (32,)),  # 5 context frames of 2 channels
    "b1": TaskIO(6, 1, 1, (32,)),
    "s2": TaskIO(1, 1, 2, (8, 8), steady=True),
}


def _inputs(task: str, b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    io = TASKS[task]
    axes = [torch.linspace(-1, 1, n) for n in io.grid]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, io.dim)
    return torch.randn(b, coords.shape[1], io.in_channels), coords


def test_settings_default_to_the_dimension_and_every_frame_and_refuse_mistakes(caplog) -> None:
    frames, channels = task_settings({}, TASKS, (4, 1, 1))
    assert frames == {"a1": 4, "b1": 4, "s2": 1} and channels == {"a1": 10, "b1": 6, "s2": 1}
    with caplog.at_level(logging.WARNING):
        frames, channels = task_settings({"a1": {"context": 2, "bundle": 1}, "zz": {"context": 1}}, TASKS, (4, 1, 1))
    assert frames == {"a1": 1, "b1": 4, "s2": 1} and channels == {"a1": 4, "b1": 6, "s2": 1}
    assert "'zz'" in caplog.text  # a task this run does not train: said, not fatal
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['bundel'\]"):
        task_settings({"a1": {"bundel": 2}}, TASKS)
    with pytest.raises(ValueError, match="a1.context=6: the task gives 5 context frame"):
        task_settings({"a1": {"context": 6}}, TASKS)
    with pytest.raises(ValueError, match="s2.context=1: the task gives no context frames"):
        task_settings({"s2": {"context": 1}}, TASKS)
    with pytest.raises(ValueError, match="must be >= 1"):
        task_settings({"a1": {"context": 0}}, TASKS)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['bundle'\]"):
        task_settings({"a1": {"bundle": 2}}, TASKS, allowed=("context",))


@pytest.mark.parametrize("family", ["latent", "fno"])
def test_a_model_reads_only_the_last_context_frames_it_is_given(family: str) -> None:
    torch.manual_seed(0)
    by_task = {"a1": {"context": 2}}
    if family == "latent":
        model = LatentSurrogate(TASKS, hidden=16, depth=1, heads=2, operator_attention=False, by_task=by_task)
        with torch.no_grad():  # gates open, as after training, so every part of the input reaches the output
            for block in model.operator.blocks:
                block.modulation.weight.normal_(std=0.1)
    else:
        model = FNO(TASKS, modes=4, width=8, layers=2, by_task=by_task)
    cond = torch.zeros(2, 4)
    for task in ("a1", "b1"):  # a1 reads its last 2 of 5 frames, b1 all of its 6
        x, coords = _inputs(task)
        earlier = x.clone()
        earlier[..., : TASKS[task].out_channels] += 1.0  # the first context frame
        latest = x.clone()
        latest[..., -1] += 1.0
        out = model(task, x, coords, cond, grid=TASKS[task].grid)
        assert torch.equal(out, model(task, earlier, coords, cond, grid=TASKS[task].grid)) == (task == "a1")
        assert not torch.allclose(out, model(task, latest, coords, cond, grid=TASKS[task].grid))


def test_a_latent_model_bundles_by_task() -> None:
    model = LatentSurrogate(TASKS, hidden=16, depth=1, heads=2, bundle=[4, 1, 1], by_task={"a1": {"bundle": 1}})
    assert model.frames_per_call == {"a1": 1, "b1": 4, "s2": 1}
    x, coords = _inputs("b1")
    assert model("b1", x, coords, torch.zeros(2, 4)).shape[-1] == 4  # four frames of one channel
    x, coords = _inputs("a1")
    assert model("a1", x, coords, torch.zeros(2, 4)).shape[-1] == 2
