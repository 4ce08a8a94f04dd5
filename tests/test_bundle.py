"""Temporal bundling: a latent model that predicts several frames per call, the rollout that feeds
them back, the windows and loss that train it, and the stages that refuse it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ups.config import ConfigError
from ups.data.datasets import task_keys
from ups.evaluation.diagnosis import DiagnosisSettings, diagnose
from ups.evaluation.evaluate import rollout
from ups.evaluation.loading import load_run
from ups.export import export_run
from ups.exported import load_export
from ups.models.spec import TaskIO
from ups.models.surrogate import LatentSurrogate
from ups.objectives import NextStep
from ups.objectives.next_step import frames_per_call, predict_next
from ups.records import read_records
from ups.runner import run


def _oracle(traj: torch.Tensor, m: int, calls: list[int]):
    """A predictor returning the true next ``m`` frames (the last one repeated past the end)."""

    def predict(batch: dict) -> torch.Tensor:
        t, (b, n, p, c) = batch["t"], traj.shape
        calls.append(t)
        idx = [min(t + j, n - 1) for j in range(m)]
        # what the rollout fed back is the truth, so the context must be the true frames before t
        k = batch["x"].shape[-1] // c
        assert torch.equal(batch["x"], traj[:, t - k : t].permute(0, 2, 1, 3).reshape(b, p, k * c))
        return traj[:, idx].permute(0, 2, 1, 3).reshape(b, p, m * c)

    return predict


@pytest.mark.parametrize("m", [1, 3, 4])
def test_rollout_feeds_back_every_frame_of_a_bundle(m: int) -> None:
    traj = torch.randn(2, 12, 5, 2)  # 10 frames to predict after 2 of context
    calls: list[int] = []
    out = rollout(_oracle(traj, m, calls), {}, traj, initial_step=2)
    assert torch.equal(out, traj[:, 2:])  # the last bundle is cut at the trajectory's end
    assert calls == list(range(2, 12, m))  # one call per bundle
    calls.clear()
    one_step = rollout(_oracle(traj, m, calls), {}, traj, initial_step=2, teacher_forced=True)
    assert torch.equal(one_step, traj[:, 2:]) and calls == list(range(2, 12))  # first frame of each call


def _model(bundle) -> LatentSurrogate:
    tasks = {
        "line": TaskIO(in_channels=6, out_channels=2, dim=1, grid=(16,)),
        "plane": TaskIO(in_channels=3, out_channels=1, dim=2, grid=(8, 8)),
        "darcy": TaskIO(in_channels=1, out_channels=1, dim=2, grid=(8, 8), steady=True),
    }
    torch.manual_seed(0)
    return LatentSurrogate(tasks, hidden=16, depth=1, heads=2, basis=4, bundle=bundle)


def test_a_bundled_model_predicts_its_frames_per_dimension_and_one_steady_output() -> None:
    model = _model([3, 2, 1])
    assert model.frames_per_call == {"line": 3, "plane": 2, "darcy": 1}
    assert frames_per_call(model) == {"line": 3, "plane": 2}
    cond = torch.zeros(2, 4)
    for task, n, (c, frames) in [("line", 16, (2, 3)), ("plane", 64, (1, 2)), ("darcy", 64, (1, 1))]:
        dim = model.tasks[task].dim
        coords = torch.rand(1, n, dim) * 2 - 1
        x = torch.randn(2, n, model.tasks[task].in_channels)
        assert model(task, x, coords, cond).shape == (2, n, c * frames)
    assert frames_per_call(_model([1, 1, 1])) == {}
    with pytest.raises(ValueError, match="bundle needs one entry >= 1 per dimension"):
        _model([2, 0, 1])


def test_the_last_context_frame_is_added_to_every_frame_and_the_scale_covers_them() -> None:
    model = _model([3, 1, 1])
    x = torch.randn(2, 16, 6)  # 3 frames of 2 channels
    batch = {"task": "line", "x": x, "coords": torch.rand(1, 16, 1) * 2 - 1, "cond": torch.zeros(2, 4)}
    raw = model("line", x, batch["coords"], batch["cond"])
    pred = predict_next(model, batch, residual=None)
    torch.testing.assert_close(pred, raw + x[..., -2:].repeat(1, 1, 3))
    y = torch.randn(2, 16, 6)
    scale = NextStep.target_scale({**batch, "y": y}, frames=3)
    torch.testing.assert_close(scale, (y - x[..., -2:].repeat(1, 1, 3)).pow(2).mean())


BUNDLE = "model.bundle=[4,1,1]"


def test_a_bundled_model_trains_and_predicts_with_fewer_calls(tiny_cfg, tmp_path: Path) -> None:
    result = run(
        tiny_cfg(
            "task=pdebench2",
            BUNDLE,
            "+stages.operator.objective.relative=true",
            "trainer.max_steps=40",
            "trainer.steps_per_epoch=10",
            f"paths.output_dir={tmp_path / 'a'}",
        )
    )
    run_dir = Path(result["run_dir"])
    losses = [r["loss"] for r in read_records(run_dir) if r["kind"] == "train"]
    assert len(losses) == 40 and sum(losses[-5:]) < 0.8 * sum(losses[:5])
    final = json.loads((run_dir / "eval" / "final_test.json").read_text())["results"]["model"]
    # 40 steps train little; the rollout's frame order is the oracle test's, here it must run and be finite
    assert all(math.isfinite(final[f"nrmse/{t}"]) for t in ("advection1d", "darcy2d"))

    # an export rebuilds the same bundled model (its sizes, steadiness included) and predicts the same
    export = load_export(export_run(run_dir, "final", tmp_path / "export"))
    loaded = load_run(run_dir, "final", None, torch.device("cpu"))
    assert export.model.frames_per_call == {"advection1d": 4, "darcy2d": 1}
    for task in loaded.tasks:
        batch = {**task_keys(task), "cond": torch.zeros(2, 4)}
        batch["x"] = torch.randn(2, batch["coords"].shape[1], task.initial_step * task.channels)
        torch.testing.assert_close(export.predict(batch), loaded.objective.predict(loaded.model, batch))

    # the diagnosis scores the rollout and leaves the one-frame floors undefined (NaN) for bundled tasks
    settings = DiagnosisSettings(2, 1, 2, 0.05, 4)
    found = diagnose(loaded.predict, loaded.model, loaded.tasks, True, "test", torch.device("cpu"), settings)
    assert 0 < found["advection1d"]["rollout"] < 1.0
    assert math.isnan(found["advection1d"]["operator_decode"]) and not math.isnan(found["darcy2d"]["operator_decode"])


def test_stages_that_train_on_one_frame_refuse_a_bundled_model(tiny_cfg, tmp_path: Path) -> None:
    for stage in ("stage=operator_unrolled", "stage=all"):
        with pytest.raises(ConfigError, match=r"model.bundle=\[1,1,1\]"):
            run(tiny_cfg("task=advection1d", BUNDLE, stage, f"paths.output_dir={tmp_path / 'b'}"))


def test_a_bundled_model_trains_on_two_ranks(data_dir: Path, tmp_path: Path) -> None:
    args = [
        sys.executable,
        "-m",
        "ups.train",
        "model=tiny",
        BUNDLE,
        "hardware=cpu",
        "task=pdebench2",
        "data.generate=true",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={tmp_path / 'run'}",
        "parallelism=ddp2",
        "trainer.max_steps=6",
        "trainer.batch_size=4",
        "data.eval_samples=2",
        "parallelism.timeout_s=60",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
