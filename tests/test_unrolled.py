"""Multi-step (unrolled) training: windows with several future frames, losses that reach every
trained module through the rollout, pushforward's detached steps, and a run under 1 and 2 ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ups.data.datasets import MultiTaskDataset, WindowDataset
from ups.models.spec import spec_of
from ups.objectives import NextStep, Unrolled
from ups.runner import build_model, build_tasks, run


@pytest.fixture
def advection(tiny_cfg, tmp_path: Path):
    cfg = tiny_cfg("task=advection1d")
    tasks = build_tasks(cfg, tmp_path)
    torch.manual_seed(0)
    return tasks[0], build_model(cfg.model, tasks)


def _batch(task, horizon: int, n: int = 6) -> dict:
    windows = WindowDataset(task, "train", horizon=horizon)
    return MultiTaskDataset([windows]).collate([{"task_index": 0, **windows[i]} for i in range(n)])[0]


def test_windows_hold_the_next_frames_and_fewer_starts(advection) -> None:
    task, _ = advection
    one, three = WindowDataset(task, "train"), WindowDataset(task, "train", horizon=3)
    per_traj = task.n_steps - task.initial_step
    assert len(one) == len(task.splits["train"]) * per_traj
    assert len(three) == len(task.splits["train"]) * (per_traj - 2)
    c = task.channels
    w = three[per_traj - 2 + 1]  # second trajectory, second start
    for i in range(3):  # frame i after the context is window (start + i)'s next frame
        assert torch.equal(w["y"][..., i * c : (i + 1) * c], one[per_traj + 1 + i]["y"])
    assert torch.equal(w["x"], one[per_traj + 1]["x"])
    with pytest.raises(ValueError, match=f"{task.name}: horizon 999"):
        WindowDataset(task, "train", horizon=999)


def _grads(model, objective, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    objective.loss(model, batch).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_unrolled_losses_reach_encoder_operator_and_decoder_through_the_rollout(advection) -> None:
    task, model = advection
    batch = _batch(task, horizon=3)
    full, push = _grads(model, Unrolled(steps=3), batch), _grads(model, Unrolled(steps=3, pushforward=True), batch)
    one = _grads(model, NextStep(), {**batch, "y": batch["y"][..., : task.channels]})
    for name, group in spec_of(model).groups(model).items():
        ids = {id(p) for p in group.parameters()}
        names = {n for n, p in model.named_parameters() if id(p) in ids}
        assert any(full[n].abs().sum() > 0 for n in names if n in full), f"no gradient reaches {name}"
        assert any(push[n].abs().sum() > 0 for n in names if n in push), f"pushforward: none reaches {name}"
    # three different training signals, not one loss under three names
    assert any(not torch.allclose(full[n], push[n]) for n in full)
    assert any(not torch.allclose(full[n], one[n]) for n in full)


def test_pushforward_trains_one_step_after_a_random_detached_unroll(advection) -> None:
    task, model = advection
    batch, c = _batch(task, horizon=2), task.channels
    with torch.no_grad():
        first = NextStep().predict(model, batch)
    shifted = {**batch, "x": torch.cat([batch["x"][..., c:], first], dim=-1), "y": batch["y"][..., c:]}
    expected = {
        0: _grads(model, NextStep(), {**batch, "y": batch["y"][..., :c]}),  # true context
        1: _grads(model, NextStep(), shifted),
    }  # the second step's MSE, its input a constant
    drawn = set()
    for seed in range(8):
        torch.manual_seed(seed)
        n = int(torch.randint(0, 2, ()))  # what the objective will draw from the same RNG state
        torch.manual_seed(seed)
        got = _grads(model, Unrolled(steps=2, pushforward=True), batch)
        assert expected[n].keys() == got.keys() and all(torch.allclose(expected[n][k], got[k], atol=1e-6) for k in got)
        drawn.add(n)
    assert drawn == {0, 1}  # both true-context and pushed-forward steps are trained
    full = Unrolled(steps=2).loss(model, batch)
    step_losses = [NextStep().loss(model, {**batch, "y": batch["y"][..., :c]}), NextStep().loss(model, shifted)]
    assert torch.allclose(full, torch.stack(step_losses).mean(), atol=1e-6)


def test_relative_unrolled_loss_scales_each_step_by_its_true_change(advection) -> None:
    """Each step's MSE over the batch's mean square *true* change over that step (not the change from
    the model's own previous prediction, which would reward a drifting rollout with a larger scale)."""
    task, model = advection
    batch, c = _batch(task, horizon=2), task.channels
    y1, y2 = batch["y"][..., :c], batch["y"][..., c:]
    with torch.no_grad():
        first = NextStep().predict(model, batch)
        second = NextStep().predict(model, {**batch, "x": torch.cat([batch["x"][..., c:], first], dim=-1)})
        expected = (
            NextStep(relative=True).loss(model, {**batch, "y": y1})
            + torch.nn.functional.mse_loss(second, y2) / (y2 - y1).pow(2).mean()
        ) / 2
        got = Unrolled(steps=2, relative=True).loss(model, batch)
    assert torch.allclose(got, expected, rtol=1e-5)
    assert not torch.allclose(got, Unrolled(steps=2).loss(model, batch).detach(), rtol=1e-2)


UNROLLED = "stage=operator_unrolled"


def test_an_unrolled_stage_trains_and_refuses_the_latent_cache(tiny_cfg, tmp_path: Path) -> None:
    result = run(
        tiny_cfg(
            "task=advection1d",
            UNROLLED,
            "trainer.max_steps=30",
            "trainer.steps_per_epoch=10",
            f"paths.output_dir={tmp_path / 'a'}",
        )
    )
    train = [json.loads(ln) for ln in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in train if r["kind"] == "train"]
    assert len(losses) == 30 and sum(losses[-5:]) < 0.8 * sum(losses[:5])
    from ups.config import ConfigError

    frozen = [
        "stage=pretrain_finetune",
        "stages.finetune.objective._target_=ups.objectives.Unrolled",
        "trainer.max_steps=4",
        "stages.finetune.steps=4",
        f"paths.output_dir={tmp_path / 'b'}",
    ]
    with pytest.raises(ConfigError, match="stages.finetune.latent_cache=false"):
        run(tiny_cfg("task=advection1d", *frozen))


@pytest.mark.parametrize("layout", ["ddp2", pytest.param("fsdp2_2", marks=pytest.mark.slow)])
def test_an_unrolled_stage_runs_on_two_ranks(layout: str, data_dir: Path, tmp_path: Path) -> None:
    # several forwards before one backward: DDP's reducer and FSDP2's reshard must both allow it
    args = [
        sys.executable,
        "-m",
        "ups.train",
        "model=tiny",
        "hardware=cpu",
        "task=pdebench2",
        "data.generate=true",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={tmp_path / 'run'}",
        f"parallelism={layout}",
        UNROLLED,
        "trainer.max_steps=6",
        "trainer.batch_size=4",
        "data.eval_samples=2",
        "parallelism.timeout_s=60",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
