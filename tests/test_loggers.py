"""The W&B logger on a fake ``wandb`` module: what it sends, without a network or an account."""

from __future__ import annotations

import sys
import types
from pathlib import Path

from omegaconf import OmegaConf

from ups.training.loggers import STEP_KEY, WandbLogger


def test_redone_steps_reach_wandb_on_the_trainer_step_axis(tmp_path: Path, monkeypatch) -> None:
    """W&B drops a record logged with a step not above the last one, so after a restart redid steps 9
    and 10 their new values were lost: the step travels as a value on its own axis instead."""
    logged, defined = [], []

    class Run:
        def define_metric(self, name, **kw):
            defined.append((name, kw))

        def log(self, data, **kw):
            assert "step" not in kw, "W&B's own step would drop the redone records"
            logged.append(data)

        def finish(self):
            pass

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: Run()))
    trainer = types.SimpleNamespace(
        env=types.SimpleNamespace(is_main=True), run_dir=str(tmp_path), cfg=OmegaConf.create({"a": 1})
    )
    logger = WandbLogger(mode="offline")
    logger.on_run_start(trainer)
    steps = [*range(1, 11), 9, 10]  # a restart from the checkpoint at step 8 redoes 9 and 10
    for step in steps:
        logger.on_log(trainer, {"kind": "train", "step": step, "stage": "operator", "loss": 1.0 / step})
    logger.on_run_end(trainer)
    assert (STEP_KEY, {}) in defined and ("*", {"step_metric": STEP_KEY}) in defined
    assert [r[STEP_KEY] for r in logged] == steps and logged[-1]["train/loss"] == 0.1
