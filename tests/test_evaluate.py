"""``python -m ups.evaluate``: the end-of-training numbers again from the checkpoint, every metric, the trivial predictors."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_module

from ups.evaluate import evaluate_run
from ups.evaluation.baselines import persistence
from ups.evaluation.pdebench_metrics import METRICS
from ups.runner import run
from ups.training.callbacks import ProgressBar


def _evaluate(run_dir: Path, *overrides: str) -> None:
    with initialize_config_module(config_module="ups.conf", version_base="1.3"):
        evaluate_run(compose(config_name="evaluate", overrides=[f"run={run_dir}", *overrides]))


@pytest.mark.parametrize("extra", [(), ("callbacks=[default,ema]", "callbacks.ema.decay=0.5")], ids=["weights", "ema"])
def test_evaluate_reproduces_the_end_of_training_numbers(tiny_cfg, extra) -> None:
    result = run(tiny_cfg("trainer.max_steps=6", "trainer.steps_per_epoch=3", *extra))
    run_dir = Path(result["run_dir"])
    at_end = json.loads((run_dir / "eval" / "final_test.json").read_text())["results"]
    _evaluate(run_dir, "checkpoint=final")
    again = json.loads((run_dir / "eval" / "final_test.json").read_text())["results"]
    assert again == at_end  # exactly: same weights, same code
    assert again["model"]["nrmse/darcy2d"] == result["test/nrmse/darcy2d"]


def test_every_metric_for_every_task_and_the_trivial_predictors(tiny_cfg) -> None:
    run_dir = Path(run(tiny_cfg("trainer.max_steps=3", "trainer.steps_per_epoch=3"))["run_dir"])
    _evaluate(run_dir, "split=val")
    for name in ("final_val", "best_val"):
        results = json.loads((run_dir / "eval" / f"{name}.json").read_text())["results"]
        model = results["model"]
        for task in ("advection1d", "darcy2d"):
            for metric in METRICS:
                assert isinstance(model[f"{metric}/{task}"], float)
                assert isinstance(model[f"one_step/{metric}/{task}"], float)
            assert isinstance(results["mean_field"][f"nrmse/{task}"], float)
        assert len(model["nrmse_t/advection1d"]) == 31 and len(model["nrmse_t/darcy2d"]) == 1
        assert "nrmse/advection1d" in results["persistence"] and "nrmse/darcy2d" not in results["persistence"]
        assert model["one_step/nrmse/darcy2d"] == model["nrmse/darcy2d"]  # steady: one step is the rollout
        assert (run_dir / "eval" / f"{name}_nrmse_vs_step.png").stat().st_size > 5_000
        table = (run_dir / "eval" / f"{name}.md").read_text()
        assert "| advection1d |" in table and "persistence" in table and "training-mean field" in table


def test_cli_writes_files_and_fails_in_one_paragraph(tiny_cfg, tmp_path: Path) -> None:
    run_dir = Path(run(tiny_cfg("trainer.max_steps=3", "trainer.steps_per_epoch=3", "task=darcy2d"))["run_dir"])
    proc = subprocess.run(
        [sys.executable, "-m", "ups.evaluate", f"run={run_dir}", "checkpoint=best"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "eval" / "best_test.md").exists() and "Rollout nRMSE" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "ups.evaluate", f"run={run_dir}", "checkpoint=step_00000099"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "step_00000099" in proc.stderr and "operator/final" in proc.stderr  # what exists is named


def test_persistence_repeats_the_last_context_frame() -> None:
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(2, 5, 6)  # k=3 frames of C=2, time outermost
    assert torch.equal(persistence({"x": x, "channels": 2}), x[..., 4:])
    assert persistence({"x": x, "channels": 2, "steady": True}) is None


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_the_step_loss_and_log_lines_stay_on_their_own(monkeypatch) -> None:
    tty = _TTY()
    monkeypatch.setattr(sys, "stdout", tty)
    handler = logging.StreamHandler(sys.stdout)
    logging.getLogger().addHandler(handler)
    try:
        trainer = SimpleNamespace(
            env=SimpleNamespace(is_main=True),
            total_steps=10,
            stage_name="operator",
            step=0,
            epoch=0,
            last_loss=float("nan"),
        )
        bar = ProgressBar(stream=tty)
        bar.on_run_start(trainer)
        bar.on_fit_start(trainer)
        trainer.step, trainer.last_loss = 1, 0.125
        bar.on_step_end(trainer)
        logging.getLogger("ups.test").warning("step 1 val nRMSE advection1d=0.5")
        bar.on_run_end(trainer)
    finally:
        logging.getLogger().removeHandler(handler)
    out = tty.getvalue()
    assert "loss=0.125" in out and "nan" not in out
    assert "step 1 val nRMSE advection1d=0.5" in [line.strip("\r ") for line in out.replace("\r", "\n").split("\n")]
