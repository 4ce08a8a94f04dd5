"""``run(cfg)``: config -> data -> model -> parallelize -> trainer (stages) -> metrics.

Importable and called directly by tests; ``ups/train.py`` only composes the config and calls it.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ups.config import validate
from ups.data.tasks import TaskData, build_task, log_task_note
from ups.distributed.collectives import main_first
from ups.distributed.env import DistEnv, process_group, resolve_device
from ups.distributed.parallelize import parallelize
from ups.models import TaskIO
from ups.training.callbacks import EMA, Callback, EarlyStopping, ModelCheckpoint, ProgressBar
from ups.training.checkpoint import Checkpointer
from ups.training.loggers import JsonlLogger, WandbLogger
from ups.training.trainer import Trainer

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tasks(cfg: DictConfig, run_dir: Path) -> list[TaskData]:
    """Every dataset of the task group, located (or generated), split and normalised."""
    data_dir = Path(cfg.paths.data_dir)
    return [build_task(name, ds, cfg.data, data_dir, [data_dir, run_dir]) for name, ds in cfg.task.datasets.items()]


def build_model(model_cfg: Any, tasks: list[TaskData]) -> torch.nn.Module:
    """The configured surrogate with one input/output projection per task (runtime sizes from the data)."""
    io = {t.name: TaskIO(in_channels=t.initial_step * t.channels, out_channels=t.channels, dim=t.family.dim)
          for t in tasks}
    return instantiate(model_cfg, tasks=io)


def build_callbacks(cfg: DictConfig, run_dir: Path, env: DistEnv) -> list[Callback]:
    t = cfg.trainer
    cbs: list[Callback] = []
    if t.ema_decay is not None:
        cbs.append(EMA(t.ema_decay))  # first, so later callbacks evaluate and save with it in place
    cbs += [ModelCheckpoint(), JsonlLogger(run_dir, env.is_main)]
    if cfg.logger.wandb:
        cbs.append(WandbLogger(cfg, run_dir, env.is_main))
    if t.early_stop_patience is not None:
        cbs.append(EarlyStopping(t.early_stop_patience))
    if t.progress:
        cbs.append(ProgressBar())
    return cbs


def summary_table(tasks: list[TaskData], val: dict, test: dict, epoch_losses: list[float]) -> str:
    """The per-task table printed at the end of a run."""
    width = max(len("task"), *(len(t.name) for t in tasks))
    lines = [f"{'task':<{width}}  {'dim':>3}  {'ch':>2}  {'val nRMSE':>10}  {'test nRMSE':>10}"]
    for t in tasks:
        lines.append(f"{t.name:<{width}}  {t.family.dim:>3}  {t.channels:>2}  "
                     f"{val[f'nrmse/{t.name}']:>10.4g}  {test[f'nrmse/{t.name}']:>10.4g}")
    lines.append(f"{'mean':<{width}}  {'':>3}  {'':>2}  {val['nrmse/mean']:>10.4g}  {test['nrmse/mean']:>10.4g}")
    if epoch_losses:
        lines.append(f"mean train loss: first epoch {epoch_losses[0]:.4g} -> last epoch {epoch_losses[-1]:.4g} "
                     f"({len(epoch_losses)} epochs)")
    return "\n".join(lines)


def run(cfg: DictConfig, env: DistEnv | None = None) -> dict[str, Any]:
    """Train every configured stage and return final metrics: ``val/nrmse/<task>``, ``test/...``.

    Called once per rank; joins the job's process group for the duration.
    """
    validate(cfg)
    env = env or DistEnv.from_env()
    device = resolve_device(cfg.hardware.device, env)
    with process_group(env, device, cfg.parallelism.backend, cfg.parallelism.timeout_s):
        return _run(cfg, env, device)


def _run(cfg: DictConfig, env: DistEnv, device: torch.device) -> dict[str, Any]:
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if env.is_main:
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    if cfg.hardware.threads:
        torch.set_num_threads(cfg.hardware.threads)
    elif device.type == "cpu" and env.local_world_size > 1:
        # N CPU ranks each using every core would oversubscribe them many times over.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world_size))
    seed_everything(cfg.trainer.seed)
    log_task_note(cfg.task, is_main=env.is_main)
    with main_first(env.is_main):  # rank 0 generates missing data and statistics; the others then read
        tasks = build_tasks(cfg, run_dir)
    raw_model = build_model(cfg.model, tasks).to(device)
    n_params = sum(p.numel() for p in raw_model.parameters())
    log.info("model %s: %.2fM parameters on %s; tasks %s", cfg.model._target_, n_params / 1e6, device,
             ", ".join(f"{t.name} ({t.family.dim}D, {t.channels} ch, {len(t.splits['train'])} train traj)"
                       for t in tasks))
    model = parallelize(raw_model, cfg, env, device)
    trainer = Trainer(cfg, model, raw_model, tasks, env, device, build_callbacks(cfg, run_dir, env),
                      Checkpointer(run_dir, cfg.trainer.keep_last_k, env.is_main))
    for stage in cfg.stages.values():
        last = trainer.fit(stage)

    val = {k: v for k, v in last.items() if k.startswith("nrmse/")}  # the last stage's final evaluation
    test = trainer.evaluate("test")
    if env.is_main:
        trainer.log_record({"step": trainer.step, "kind": "eval", "stage": "final", "split": "test", **test})
        print(summary_table(tasks, val, test, trainer.epoch_losses), flush=True)
    result: dict[str, Any] = {f"val/{k}": v for k, v in val.items()}
    result.update({f"test/{k}": v for k, v in test.items()})
    result.update(step=trainer.step, epoch_losses=trainer.epoch_losses, run_dir=str(run_dir))
    return result
