"""``model.by_task``: per task, its own frames per call and cell size (latent) and fewer context frames read
(latent, FNO)."""

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
    frames, channels, cells = task_settings({}, TASKS, (4, 1, 1), patch=(4, 4, 2))
    assert frames == {"a1": 4, "b1": 4, "s2": 1} and channels == {"a1": 10, "b1": 6, "s2": 1}
    assert cells == {"a1": [4, 4, 2], "b1": [4, 4, 2], "s2": [4, 4, 2]}
    with caplog.at_level(logging.WARNING):
        frames, channels, cells = task_settings(
            {"a1": {"context": 2, "bundle": 1}, "s2": {"patch": 2}, "zz": {"context": 1}},
            TASKS,
            (4, 1, 1),
            patch=(4, 4, 2),
        )
    assert frames == {"a1": 1, "b1": 4, "s2": 1} and channels == {"a1": 4, "b1": 6, "s2": 1}
    assert cells["s2"] == [4, 2, 2] and cells["a1"] == [4, 4, 2]  # a 2D task's entry is the second
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


def test_a_latent_task_gets_its_own_cell_size() -> None:
    tasks = {"s2": TaskIO(2, 1, 2, (16, 16)), "t2": TaskIO(2, 1, 2, (16, 16))}
    model = LatentSurrogate(tasks, hidden=16, depth=1, heads=2, patch=[4, 4, 4], by_task={"s2": {"patch": 2}})
    assert model.token_shapes == {"s2": (8, 8), "t2": (4, 4)}
    x, axes = torch.randn(2, 256, 2), [torch.linspace(-1, 1, 16)] * 2
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, 2)
    assert model("s2", x, coords, torch.zeros(2, 4), grid=(16, 16)).shape == (2, 256, 1)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['patch'\]"):
        FNO(tasks, modes=4, width=8, layers=1, by_task={"s2": {"patch": 2}})


def test_the_dry_runs_memory_estimate_counts_a_tasks_own_cells() -> None:
    from omegaconf import OmegaConf

    from ups.distributed.dry_run import activation_bytes

    io = {"s2": TaskIO(2, 1, 2, (16, 16))}
    model = dict(hidden=16, heads=2, depth=1, patch=[4, 4, 4], lattice=[16, 8, 4], encoder_layers=0, decoder_layers=0)
    cfg = OmegaConf.create(
        {"model": model, "trainer": {"batch_size": 2}, "hardware": {"precision": "fp32", "activation_checkpointing": 0}}
    )
    plain = activation_bytes(cfg, io, 256)
    cfg.model.by_task = {"s2": {"patch": 2}}
    assert activation_bytes(cfg, io, 256) > plain  # 64 tokens instead of 16
