"""Stages as a pipeline: checkpoints per stage, resume in the stage that stopped, one global step, one W&B run."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import torch

from tests.conftest import crash_run
from ups.runner import run
from ups.training.checkpoint import MARKER, Checkpointer, load_consolidated, pack

TWO_STAGES = [
    "task=darcy2d",
    "stage=pretrain_finetune",
    "trainer.max_steps=6",
    "trainer.steps_per_epoch=3",
    "stages.finetune.steps=6",
    "optim.warmup_steps=2",
]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _save(ckpt: Checkpointer, name: str, step: int) -> None:
    ckpt.save({"model": {"w": torch.full((2,), float(step))}, "trainer": pack({"step": step})}, name, step)


def test_checkpoints_are_kept_pruned_and_found_per_stage(tmp_path: Path) -> None:
    first = Checkpointer(tmp_path / "checkpoints" / "operator", keep_last_k=2)
    second = Checkpointer(tmp_path / "checkpoints" / "finetune", keep_last_k=2)
    for step in (3, 6, 9):
        _save(first, f"step_{step:08d}", step)
    first.copy("step_00000006", "best")
    assert sorted(p.name for p in first.root.glob("step_*")) == ["step_00000006", "step_00000009"]
    assert first.latest().name == "step_00000009"
    _save(first, "final", 9)
    assert first.latest().name == "final"  # a finished stage: final wins over the step of the same number
    # The second stage's first checkpoint sorts before the first stage's newest; neither prunes the other.
    _save(second, "step_00000003", 3)
    second.copy("step_00000003", "best")
    assert second.latest().name == "step_00000003"
    assert (second.root / "best" / MARKER).exists() and (first.root / "step_00000009" / MARKER).exists()
    assert first.latest().name == "final"
    _save(second, "step_00000100", 100)
    _save(second, "step_00000020", 20)  # ordered by the step it records, not by name
    assert second.latest().name == "step_00000100"
    assert sorted(p.name for p in second.root.glob("step_*")) == ["step_00000020", "step_00000100"]
    assert Checkpointer(tmp_path / "checkpoints" / "steady").latest() is None


def test_two_stage_pipeline_resumes_in_the_second_stage_bit_identically(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    straight = run(tiny_cfg(*TWO_STAGES, f"paths.output_dir={tmp_path / 'a'}"))
    cfg = tiny_cfg(*TWO_STAGES, f"paths.output_dir={tmp_path / 'b'}")
    # finetune's step 4 comes after its step-3 checkpoint
    crash_run(cfg, lambda trainer: trainer.stage_name == "finetune" and trainer.step == 4, monkeypatch)
    before = len(records(tmp_path / "b"))
    resumed = run(cfg)

    # A resume, not a restart: the second attempt trains only finetune steps 5.., continuing the global count.
    again = [r for r in records(tmp_path / "b")[before:] if r["kind"] == "train"]
    assert [(r["stage"], r["stage_step"], r["step"]) for r in again] == [("finetune", s, 6 + s) for s in (4, 5, 6)]
    a, b = (load_consolidated(tmp_path / d / "checkpoints" / "finetune" / "final")["model"] for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda d: {r["step"]: r["loss"] for r in records(tmp_path / d) if r["kind"] == "train"}  # noqa: E731
    assert losses("b") == losses("a") and sorted(losses("a")) == list(range(1, 13))
    assert resumed["step"] == straight["step"] == 12
    assert resumed["test/nrmse/darcy2d"] == straight["test/nrmse/darcy2d"]
    for run_dir in (tmp_path / "a", tmp_path / "b"):
        for stage in ("operator", "finetune"):
            assert (run_dir / "checkpoints" / stage / "final" / MARKER).exists()
            assert (run_dir / "checkpoints" / stage / "best" / MARKER).exists()


def test_steps_zero_skips_a_stage_and_a_raised_budget_continues(tiny_cfg, tmp_path: Path) -> None:
    # finetune trains everything: with operator skipped, a frozen encoder would be random (refused)
    result = run(
        tiny_cfg(
            "task=darcy2d",
            "stage=pretrain_finetune",
            "stages.operator.steps=0",
            "stages.finetune.steps=3",
            "stages.finetune.freeze=[]",
            "trainer.steps_per_epoch=3",
        )
    )
    run_dir = Path(result["run_dir"])
    assert not (run_dir / "checkpoints" / "operator").exists()
    assert {r["stage"] for r in records(run_dir) if r["kind"] == "train"} == {"finetune"}

    common = ["task=darcy2d", "trainer.steps_per_epoch=3", f"paths.output_dir={tmp_path / 'more'}"]
    run(tiny_cfg(*common, "trainer.max_steps=3"))
    more = run(tiny_cfg(*common, "trainer.max_steps=6"))
    assert more["step"] == 6
    assert [r["step"] for r in records(tmp_path / "more") if r["kind"] == "train"] == list(range(1, 7))


def test_time_budget_stops_the_stage_and_evaluates(tiny_cfg) -> None:
    result = run(tiny_cfg("task=darcy2d", "trainer.max_steps=1000", "trainer.time_budget_s=0.001"))
    assert 1 <= result["step"] < 1000
    state = load_consolidated(Path(result["run_dir"]) / "checkpoints" / "operator" / "final")["trainer"]
    assert "time budget" in state["stopped"]
    assert "test/nrmse/darcy2d" in result


class _RecordingRun:
    def __init__(self, calls: list, kwargs: dict):
        self.calls, self.kwargs = calls, kwargs
        calls.append(("init", kwargs))

    def define_metric(self, name: str, **kwargs) -> None:
        self.calls.append(("define_metric", name, kwargs))

    def log(self, data: dict) -> None:  # the trainer's step travels in the data (ups/training/loggers.py)
        self.calls.append(("log", data["trainer/step"], data))

    def finish(self) -> None:
        self.calls.append(("finish",))


def test_one_wandb_run_across_stages_with_split_prefixes(tiny_cfg, monkeypatch) -> None:
    calls: list = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: _RecordingRun(calls, kw)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run(tiny_cfg(*TWO_STAGES, "logger=wandb", "stages.finetune.steps=3"))
    assert [c[0] for c in calls].count("init") == 1 and calls[-1] == ("finish",)
    logs = [c for c in calls if c[0] == "log"]
    steps = [c[1] for c in logs]
    assert steps == sorted(steps) and steps[-1] == 9  # one global step across both stages
    keys = set().union(*(c[2] for c in logs))
    assert {"train/loss", "val/nrmse/darcy2d", "test/nrmse/darcy2d", "test/crmse/darcy2d"} <= keys
    assert not any(k.startswith("nrmse/") for k in keys)
    assert "test/nrmse/darcy2d" in logs[-1][2]  # the closing test record arrives before finish
    assert calls[0][1]["group"] is None and calls[0][1]["name"] is None  # single run: no sweep group


def test_multirun_jobs_get_a_wandb_group_and_name() -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    with initialize_config_module(config_module="ups.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["logger=wandb", "trainer.batch_size=8"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode, cfg.hydra.job.num = RunMode.MULTIRUN, 3
        cfg.hydra.sweep.dir, cfg.hydra.job.override_dirname = "multirun/sweep", "trainer.batch_size=8"
    HydraConfig.instance().set_config(cfg)
    try:
        assert cfg.logger.wandb.group == "multirun/sweep"
        assert cfg.logger.wandb.name == "3:trainer.batch_size=8"
    finally:
        HydraConfig.instance().cfg = None


def test_an_interrupted_swap_is_recovered_or_cleaned_up(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path / "checkpoints" / "operator")
    _save(ckpt, "step_00000003", 3)
    ckpt.copy("step_00000003", "best")
    # Killed after the old copy was renamed aside and before the new one took its place.
    (ckpt.root / "best").rename(ckpt.root / ".best.old")
    _save(ckpt, "final", 3)
    (ckpt.root / "final").rename(ckpt.root / ".final.old")
    assert ckpt.latest().name == "final"  # the complete old copy is back under its name
    assert (ckpt.root / "best" / MARKER).exists() and not (ckpt.root / ".best.old").exists()
    # Killed after the new copy was in place but before the old one was removed: saves still work.
    shutil.copytree(ckpt.root / "best", ckpt.root / ".best.old")
    _save(ckpt, "step_00000006", 6)
    ckpt.copy("step_00000006", "best")
    assert json.loads((ckpt.root / "best" / "meta.json").read_text())["step"] == 6
    assert not (ckpt.root / ".best.old").exists()
