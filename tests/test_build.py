"""One builder (ups/build.py): training, the bench, the tuner, evaluation and the dry run build the same run.

The run here has what drifted before: a stage that freezes a group, and a later stage's head, which
the trainer keeps frozen in the first stage and the bench used to train; bf16 autocast, which the
tuner and evaluation used to build their own way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

OVERRIDES = (
    "task=darcy2d",
    "stage=[operator,diffusion]",
    "stages.operator.freeze=[decoder]",
    "stages.diffusion.steps=0",
    "hardware.precision=bf16",
    "trainer.batch_size=4",
)


class _Built(Exception):
    """Stops a caller once its run is built, carrying what it built."""

    def __init__(self, **parts):
        super().__init__("built")
        self.parts = parts


def _autocast_dtype(autocast) -> torch.dtype | None:
    with autocast():
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _through_training(cfg, monkeypatch) -> dict:
    """ups.runner.run up to the first stage's resume point (objective built, groups frozen); saves a
    ``final`` checkpoint of the initial weights there, for evaluation to load."""
    from ups.runner import run
    from ups.training.trainer import Trainer

    def stop(trainer: Trainer) -> bool:
        trainer.checkpointer.save(trainer.state_dict(stage_done=True), "final", 0, consolidate=True)
        raise _Built(
            model=trainer.raw_model,
            trainable=_trainable(trainer.raw_model),
            autocast=_autocast_dtype(trainer.autocast),
            objective=trainer.objective,
        )

    monkeypatch.setattr(Trainer, "_resume", stop)
    with pytest.raises(_Built) as built:
        run(cfg)
    monkeypatch.undo()
    return built.value.parts


def _through_tuner(cfg, monkeypatch) -> dict:
    from ups.training import batch_tuner
    from ups.tune import tune

    def stop(model, sets, objective, optimizer, device, autocast, steps):
        raise _Built(model=model, trainable=_trainable(model), autocast=_autocast_dtype(autocast), objective=objective)

    monkeypatch.setattr(batch_tuner, "training_step", stop)
    with pytest.raises(_Built) as built:
        tune(cfg)
    monkeypatch.undo()
    return built.value.parts


def test_every_caller_builds_the_same_run(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    from ups.bench.harness import Bench
    from ups.distributed import dry_run
    from ups.evaluation.loading import load_run

    cfg = tiny_cfg(*OVERRIDES)
    training = _through_training(cfg, monkeypatch)
    tuner = _through_tuner(cfg, monkeypatch)
    bench = Bench(cfg, torch.device("cpu"), tmp_path / "bench")
    benched = {
        "model": bench.raw,
        "trainable": _trainable(bench.raw),
        "autocast": _autocast_dtype(bench.context),
        "objective": bench.objective,
    }
    loaded = load_run(cfg.paths.output_dir, "final", device="cpu")
    evaluated = {"model": loaded.model, "autocast": _autocast_dtype(loaded.autocast), "objective": loaded.objective}

    ref = training["model"].state_dict()
    assert training["autocast"] == torch.bfloat16 and type(training["objective"]).__name__ == "NextStep"
    # what the first stage trains: not the frozen decoder, not the diffusion stage's head (a first stage
    # may not freeze a random encoder: ups.objectives.check_frozen_start)
    frozen = ("decoder.", "basis.", "output_head.", "stage_heads.")
    assert training["trainable"] and not any(n.startswith(frozen) for n in training["trainable"])
    assert any(n.startswith("stage_heads.") for n in ref), "the diffusion stage's head is attached from the start"
    for name, other in (("tuner", tuner), ("bench", benched), ("evaluation", evaluated)):
        state = other["model"].state_dict()
        assert list(state) == list(ref), name
        # the same seed, the same order of building: the same initial weights (evaluation loads them)
        assert all(torch.equal(state[k], ref[k]) for k in ref), name
        assert other["autocast"] == training["autocast"], name
        assert type(other["objective"]) is type(training["objective"]), name
        if "trainable" in other:
            assert other["trainable"] == training["trainable"], name

    seen = {}
    real_model_from_io = dry_run.model_from_io
    monkeypatch.setattr(dry_run, "model_from_io", lambda *a: seen.setdefault("model", real_model_from_io(*a)))
    report = dry_run.dry_run(cfg)
    assert report["parameters"] == sum(p.numel() for p in training["model"].parameters())
    shapes = {k: tuple(v.shape) for k, v in seen["model"].state_dict().items()}
    assert set(shapes) == set(ref) and all(
        shapes[k] == tuple(ref[k].shape) for k in ref if not k.startswith(("encoder", "decoder"))
    )  # grids sized from config


def test_evaluation_does_not_import_the_runner() -> None:
    """Layers: evaluation sits below the runner and builds through ups/build.py."""
    root = Path(__file__).resolve().parents[1] / "ups" / "evaluation"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            assert not any(n and n.startswith("ups.runner") for n in names), f"{path.name} imports {names}"


def test_the_stage_table_picks_rows_by_role_not_by_class(monkeypatch) -> None:
    """A new kind of head gets a row without an edit to stage_table.py: its registered builder, or the
    generic row; the operator row is the last operator stage's."""
    from torch import nn

    from ups.evaluation import stage_table
    from ups.objectives import NextStep, Objective

    class NewHead(Objective):
        head, table_role = "new", "new_head"

        def applies(self, steady: bool) -> bool:
            return not steady

    built = {"operator": NextStep(), "finetune": NextStep(), "new": NewHead()}
    names = [v.name for v in stage_table.variants(built, nn.Identity(), [])]
    assert names == ["operator", "new (NewHead)", "persistence", "training-mean field"]
    assert stage_table.variants(built, nn.Identity(), [])[0].predict.__defaults__[0] is built["finetune"]
    monkeypatch.setitem(stage_table.ROW_BUILDERS, "new_head", lambda objs, ctx: [ctx.row("mine", objs["new"])])
    assert [v.name for v in stage_table.variants(built, nn.Identity(), [])][:2] == ["operator", "mine"]
