"""Injected faults (``faults.*``) reach the trainer as a callback: the training loop holds no fault
code, and each fault still acts at the point it did when the loop called it by hand.

The two-rank behaviour (both ranks skip, FSDP2 stops, a crashed rank restarts) is tested in
``test_distributed.py``; here one rank, in-process, so the places are checked cheaply.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import ups.training.faults as faults
from ups.records import read_records
from ups.runner import run

TRAINING = Path(__file__).resolve().parents[1] / "ups" / "training"


def _train_records(run_dir: Path) -> list[dict]:
    return [r for r in read_records(run_dir) if r["kind"] == "train"]


def test_the_training_loop_holds_no_fault_code() -> None:
    for name in ("trainer.py", "step_totals.py", "failures.py"):
        found = re.search(r"\bfaults?\b|inject", (TRAINING / name).read_text(), re.IGNORECASE)
        assert found is None, f"ups/training/{name} mentions {found.group()!r}"


def test_faults_are_off_unless_a_step_is_set(tiny_cfg) -> None:
    """The runner adds the callback only then: a normal run's hooks hold nothing of it."""
    cfg = tiny_cfg()
    assert not faults.any_fault(cfg.faults)
    cfg.faults.nan_step = 3
    assert faults.any_fault(cfg.faults)


def test_oom_and_nan_skip_their_steps(tiny_cfg, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tiny_cfg(
        "task=advection1d",
        "trainer.max_steps=5",
        "trainer.eval_every=null",
        "trainer.steps_per_epoch=100",
        "faults.oom_rank=0",
        "faults.oom_step=2",
        "faults.nan_rank=0",
        "faults.nan_step=4",
    )
    with caplog.at_level("WARNING"):
        run(cfg)
    text = caplog.text
    assert "step 2 skipped on all ranks: out of memory in forward" in text
    assert "step 4 skipped on all ranks: non-finite loss" in text
    train = _train_records(Path(cfg.paths.output_dir))
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5] and train[-1]["skipped_steps"] == 2


def test_a_crash_comes_after_the_steps_evaluation_and_checkpoint(tiny_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """The crash at step 4 fires once step 4 is logged, evaluated and checkpointed: a restarted job
    resumes from step 4, as it did when the loop called the injector after the evaluation."""

    class Crashed(Exception):
        pass

    def exit_(code: int) -> None:
        raise Crashed(code)

    monkeypatch.setattr(faults.os, "_exit", exit_)
    cfg = tiny_cfg(
        "task=advection1d",
        "trainer.max_steps=8",
        "trainer.eval_every=2",
        "trainer.steps_per_epoch=100",
        "faults.crash_rank=0",
        "faults.crash_step=4",
    )
    with pytest.raises(Crashed):
        run(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert (run_dir / "checkpoints" / "operator" / "step_00000004" / "COMPLETE").exists()
    assert max(r["step"] for r in _train_records(run_dir)) == 4
