"""A run's parts, built once and the same way for every caller.

Training (``ups/runner.py``), the bench (``ups/bench/harness.py``), the batch tuner (``ups/tune.py``),
evaluation (``ups/evaluation/loading.py``) and the dry run (``ups/distributed/dry_run.py``) all get
from here: each stage's objective (built once), the tasks' data, the model sized from the tasks with
the heads the objectives attach, which groups a stage trains, and the compute context (device,
autocast, attention backend). What a caller then does with the parts (wrap, train, measure, load
weights, shard on a fake process group) is its own.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ups.data.registry import COND_DIM
from ups.data.tasks import TaskData, build_task
from ups.distributed.env import DistEnv, resolve_device
from ups.errors import ConfigError
from ups.models.spec import TaskIO, build
from ups.objectives import Objective, attach_heads, bind_bundle, build_objective
from ups.training.compute import compute_context
from ups.training.freeze import freeze_for_stage


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (the model's initial weights come from torch's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Compute:
    """How forward passes run on this device: ``autocast()`` enters bf16 autocast (when
    ``hardware.precision=bf16``) and the configured attention backend."""

    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    dtype: torch.dtype  # what matmuls compute in under autocast: bfloat16 or float32
    sdpa_backend: str


def build_compute(hw: Any, env: DistEnv | None = None, device: str | torch.device | None = None) -> Compute:
    """The compute context of ``hardware`` settings; the device is ``hardware.device`` for this rank
    unless ``device`` names one (evaluation's own ``device=`` option)."""
    where = "hardware.device" if device is None else "device"
    device = resolve_device(str(hw.device if device is None else device), env or DistEnv(), where)
    return Compute(
        device,
        compute_context(hw, device),
        torch.bfloat16 if hw.precision == "bf16" else torch.float32,
        str(getattr(hw, "sdpa_backend", "auto")),
    )


def build_objectives(stages: Any, strategy: str | None = None) -> dict[str, Objective]:
    """Every stage's objective, in stage order, built once before any work: a bad argument, or a
    parallel ``strategy`` the objective cannot run under, is a config error naming the stage."""
    out = {}
    for name, stage in (stages or {}).items():
        out[name] = build_objective(stage.objective, f"stages.{name}")
        reason = out[name].refuses(strategy) if strategy is not None else None
        if reason:
            raise ConfigError(f"stages.{name}.objective under parallelism.strategy={strategy}: {reason}")
    return out


def trained(stages: Any, objectives: Mapping[str, Objective]) -> dict[str, Objective]:
    """The objectives of the stages that train (``steps`` other than 0), in stage order."""
    return {name: objectives[name] for name, stage in stages.items() if stage.steps != 0}


def build_tasks(cfg: Any, run_dir: Path) -> list[TaskData]:
    """Every dataset of the task group, located (or generated), split and normalised."""
    data_dir = Path(cfg.paths.data_dir)
    return [build_task(name, ds, cfg.data, data_dir, [data_dir, run_dir]) for name, ds in cfg.task.datasets.items()]


def task_io(tasks: list[TaskData]) -> dict[str, TaskIO]:
    """The sizes a model is built from, per task: channels, dimension, grid."""
    return {
        t.name: TaskIO(
            in_channels=t.initial_step * t.channels,
            out_channels=t.channels,
            dim=t.family.dim,
            grid=t.grid,
            steady=t.family.steady,
        )
        for t in tasks
    }


def model_from_io(model_cfg: Any, io: Mapping[str, TaskIO], objectives: Mapping[str, Objective]) -> nn.Module:
    """The configured model family for these task sizes, with the heads the ``objectives`` attach
    (diffusion, consistency, steady prior) in stage order."""
    try:
        model = build(model_cfg, dict(io), COND_DIM)
    except ValueError as err:  # a size the family cannot take (e.g. a 3D grid too large): one paragraph
        raise ConfigError(f"model {model_cfg.get('_target_')}: {err}") from None
    attach_heads(model, objectives)
    bind_bundle(model, objectives)
    return model


def build_model(model_cfg: Any, tasks: list[TaskData], stages: Any = None) -> nn.Module:
    """The configured model family, sized from the data, with the heads of ``stages`` (stage configs
    or their built objectives)."""
    objectives = (
        stages if stages and all(isinstance(o, Objective) for o in stages.values()) else build_objectives(stages)
    )
    return model_from_io(model_cfg, task_io(tasks), objectives)


@dataclass
class BuiltRun:
    """The parts of one run every caller shares. ``model`` is the unwrapped model on the device."""

    cfg: Any
    tasks: list[TaskData]
    objectives: dict[str, Objective]
    model: nn.Module
    compute: Compute

    @property
    def device(self) -> torch.device:
        return self.compute.device

    def freeze(self, stage_name: str) -> list[str]:
        """Set which parameters train in ``stage_name`` (``ups/training/freeze.py``); returns the frozen groups."""
        return freeze_for_stage(self.model, stage_name, self.cfg.stages[stage_name], self.objectives[stage_name])

    def train_sets(self, env: DistEnv, run_dir: Path) -> Any:
        """The training windows of every task (``ups.training.train_sets.TrainSets``)."""
        from ups.training.train_sets import TrainSets

        return TrainSets(self.tasks, self.cfg, env, self.device, run_dir)


def build_run(
    cfg: Any,
    run_dir: Path,
    env: DistEnv | None = None,
    *,
    objectives: dict[str, Objective] | None = None,
    compute: Compute | None = None,
    tasks: list[TaskData] | None = None,
    seed: bool = True,
) -> BuiltRun:
    """Objectives, tasks, model and compute context of ``cfg``, in the order that makes the initial
    weights depend only on ``trainer.seed``: seed, data, model. ``objectives``, ``compute`` and
    ``tasks`` already built by the caller are used as they are; ``seed=False`` for a model whose
    weights are loaded next."""
    env = env or DistEnv()
    objectives = objectives if objectives is not None else build_objectives(cfg.stages, cfg.parallelism.strategy)
    compute = compute or build_compute(cfg.hardware, env)
    if seed:
        seed_everything(cfg.trainer.seed)
    tasks = tasks if tasks is not None else build_tasks(cfg, Path(run_dir))
    model = model_from_io(cfg.model, task_io(tasks), objectives).to(compute.device)
    return BuiltRun(cfg, tasks, objectives, model, compute)
