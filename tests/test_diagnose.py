"""python -m ups.diagnose and launch/diagnose.py: each part of the diagnosis on tiny runs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from ups.diagnose import diagnose_run
from ups.evaluation.diagnosis import DiagnosisSettings, diagnose
from ups.evaluation.loading import load_run
from ups.runner import run

ROOT = Path(__file__).resolve().parents[1]


def _diagnose(run_dir: Path, *overrides: str) -> dict:
    with initialize_config_module(config_module="ups.conf", version_base="1.3"):
        cfg = compose(config_name="diagnose", overrides=[f"run={run_dir}", "eval_samples=2", *overrides])
    paths = diagnose_run(cfg)
    assert {p.name for p in paths} == {"diagnosis.json", "diagnosis.md"}
    return json.loads((run_dir / "eval" / "diagnosis.json").read_text())


def test_latent_run_gets_every_floor_with_the_residual_added(tiny_cfg, tmp_path: Path) -> None:
    # residual objective and two context frames: every floor is defined on the time-dependent task
    cfg = tiny_cfg(
        "trainer.max_steps=20", "++stages.operator.objective.residual=true", "task.datasets.advection1d.initial_step=2"
    )
    run_dir = Path(run(cfg)["run_dir"])
    out = _diagnose(run_dir, "windows_per_trajectory=null", "invert_steps=10")
    meta, res = out["meta"], out["results"]
    assert meta["residual"] is True and meta["latent"] is True and meta["units"] == "normalised"
    adv, darcy = res["advection1d"], res["darcy2d"]
    for key in ("rollout", "one_step", "operator_decode", "true_next_latent", "decoder_floor", "reconstruction"):
        assert math.isfinite(adv[key]) and adv[key] >= 0, key
    # on every frame, the operator's decode plus the last frame is the objective's own prediction
    assert adv["operator_decode"] == pytest.approx(adv["one_step"], rel=1e-4)
    for row in (adv, darcy):  # the inversion starts at the operator's latent and keeps the better
        assert row["decoder_floor"] <= row["operator_decode"] + 1e-9
    assert math.isfinite(darcy["decoder_floor"]) and math.isnan(darcy["true_next_latent"])  # steady: no next context
    assert darcy["operator_decode"] == pytest.approx(darcy["one_step"], rel=1e-4)
    md = (run_dir / "eval" / "diagnosis.md").read_text()
    assert "normalised units" in md and "| advection1d |" in md and "decoder floor" in md


def test_one_context_frame_and_a_residual_leave_reconstruction_undefined(tiny_cfg) -> None:
    cfg = tiny_cfg(
        "trainer.max_steps=10",
        "task=advection1d",
        "++stages.operator.objective.residual=true",
        "task.datasets.advection1d.initial_step=1",
    )
    res = _diagnose(Path(run(cfg)["run_dir"]), "invert_steps=5")["results"]["advection1d"]
    assert math.isnan(res["reconstruction"]) and math.isfinite(res["true_next_latent"])


def test_a_model_without_latent_encoder_gets_rollout_and_one_step(tiny_cfg) -> None:
    cfg = tiny_cfg("trainer.max_steps=10", "model=fno", "task=advection1d")
    out = _diagnose(Path(run(cfg)["run_dir"]))
    assert out["meta"]["latent"] is False
    assert set(out["results"]["advection1d"]) == {"rollout", "one_step", "train_rollout"}


def test_the_training_rollout_reads_the_training_trajectories(tiny_cfg) -> None:
    """Asked for the training split itself, the training rollout is the rollout, number for number."""
    run_dir = Path(run(tiny_cfg("trainer.max_steps=10", "model=fno", "task=advection1d"))["run_dir"])
    cpu = torch.device("cpu")
    loaded, settings = load_run(str(run_dir), "final", None, cpu), DiagnosisSettings(eval_samples=2)
    train, val = (
        diagnose(loaded.predict, loaded.model, loaded.tasks, False, split, cpu, settings)["advection1d"]
        for split in ("train", "val")
    )
    assert train["train_rollout"] == train["rollout"] and val["train_rollout"] == train["rollout"]
    assert val["rollout"] != train["rollout"]


def test_cli_without_a_run_is_one_paragraph(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ups.diagnose", f"run={tmp_path / 'none'}"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1 and "Cannot diagnose" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_launch_diagnose_end_to_end(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "diag"
    cmd = [
        sys.executable,
        str(ROOT / "launch" / "diagnose.py"),
        "--task",
        "pdebench2",
        "--budget-s",
        "4",
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        "--hardware",
        "cpu",
        "--eval-samples",
        "2",
        "--invert-steps",
        "5",
        "--",
        "data.eval_samples=2",
        "task.datasets.advection1d.synth.n_samples=16",
        "task.datasets.darcy2d.synth.n_samples=16",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "diagnosis.md").read_text()
    assert (out / "val_nrmse_vs_step.png").stat().st_size > 0
    steps = {}
    for task in ("advection1d", "darcy2d"):
        row = [c.strip() for c in next(line for line in md.splitlines() if line.startswith(f"| {task} |")).split("|")]
        steps[task] = int(row[2])
        config = (out / "single" / task / "config.yaml").read_text()
        assert f"max_steps: {steps[task]}" in config  # trained alone for the steps it got in the multi-task run
        assert float(row[3]) > 0 and float(row[4]) > 0 and float(row[6]) > 0  # multi, single, reference rollouts
    multi = [json.loads(line) for line in (out / "multitask" / "metrics.jsonl").read_text().splitlines()]
    assert sum(steps.values()) == max(r["step"] for r in multi if r.get("kind") == "train")  # one task per step
