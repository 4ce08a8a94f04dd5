"""``run(cfg)``: config -> data -> model -> parallelize -> trainer (stages) -> evaluation.

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

from ups.config import ConfigError, validate
from ups.data.registry import COND_DIM
from ups.data.tasks import TaskData, build_task, log_task_note
from ups.distributed.collectives import main_first
from ups.distributed.env import DistEnv, process_group, resolve_device
from ups.distributed.parallelize import parallelize
from ups.evaluation.suite import evaluate_suite, scalar_metrics, write_results
from ups.models.spec import TaskIO, build
from ups.training.callbacks import Callback
from ups.training.checkpoint import last_trained_stage
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
    """The configured model family, sized from the data: channels, dimension, grid and conditioning width."""
    io = {t.name: TaskIO(in_channels=t.initial_step * t.channels, out_channels=t.channels, dim=t.family.dim,
                         grid=t.grid) for t in tasks}
    try:
        return build(model_cfg, io, COND_DIM)
    except ValueError as err:  # a size the family cannot take (e.g. a 3D grid too large): one paragraph
        raise ConfigError(f"model {model_cfg.get('_target_')}: {err}") from None


def build_callbacks(cfg: DictConfig) -> dict[str, Callback]:
    """The ``callbacks`` and ``logger`` groups' entries, by name (their checkpointed state is keyed by it)."""
    out: dict[str, Callback] = {}
    for group in ("callbacks", "logger"):
        for name, entry in (cfg.get(group) or {}).items():
            if entry is None:  # removed with e.g. callbacks.progress=null
                continue
            try:
                cb = instantiate(entry)
            except Exception as err:  # a misspelt argument or target: name the entry
                raise ConfigError(f"{group}.{name} cannot be built: {err}") from None
            if not isinstance(cb, Callback):
                raise ConfigError(f"{group}.{name}: {entry.get('_target_')} is not an ups.training.callbacks.Callback")
            if name in out:
                raise ConfigError(f"{group}.{name}: a callback of that name is already configured")
            out[name] = cb
    return out


def summary_table(tasks: list[TaskData], val: dict, results: dict, epoch_losses: list[float]) -> str:
    """The per-task table printed at the end of a run, with the trivial predictors beside the model."""
    width = max(len("task"), *(len(t.name) for t in tasks))
    cols = ("val nRMSE", "test nRMSE", "persistence", "mean field")
    lines = [f"{'task':<{width}}  {'dim':>3}  {'ch':>2}  " + "  ".join(f"{c:>11}" for c in cols)]

    def cell(d: dict, key: str) -> str:
        v = d.get(key)
        return f"{v:>11.4g}" if isinstance(v, float) and v == v else f"{'–':>11}"  # NaN: not defined

    for name, dim, ch in [(t.name, t.family.dim, t.channels) for t in tasks] + [("mean", "", "")]:
        key = f"nrmse/{name}"
        lines.append(f"{name:<{width}}  {dim:>3}  {ch:>2}  " + "  ".join(
            cell(d, key) for d in (val, results["model"], results["persistence"], results["mean_field"])))
    if epoch_losses:
        lines.append(f"mean train loss of the last stage: first epoch {epoch_losses[0]:.4g} -> last epoch "
                     f"{epoch_losses[-1]:.4g} ({len(epoch_losses)} epochs)")
    return "\n".join(lines)


def run(cfg: DictConfig, env: DistEnv | None = None) -> dict[str, Any]:
    """Train every configured stage, evaluate on the test split and return the final metrics.

    Keys: ``val/nrmse/<task>``, ``test/<metric>/<task>``, ``step``, ``epoch_losses``, ``run_dir``.
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
        print(f"run directory: {run_dir.resolve()}", flush=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    if cfg.hardware.threads:
        torch.set_num_threads(cfg.hardware.threads)
    elif device.type == "cpu" and env.local_world_size > 1:
        # N CPU ranks each using every core would oversubscribe them many times over.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // env.local_world_size))
    seed_everything(cfg.trainer.seed)
    log_task_note(cfg.task, is_main=env.is_main)
    callbacks = build_callbacks(cfg)  # before the data: a config error should not wait for generation
    with main_first(env.is_main):  # rank 0 generates missing data and statistics; the others then read
        tasks = build_tasks(cfg, run_dir)
    raw_model = build_model(cfg.model, tasks).to(device)
    n_params = sum(p.numel() for p in raw_model.parameters())
    log.info("model %s: %.2fM parameters on %s; tasks %s", cfg.model._target_, n_params / 1e6, device,
             ", ".join(f"{t.name} ({t.family.dim}D, {t.channels} ch, {len(t.splits['train'])} train traj)"
                       for t in tasks))
    model = parallelize(raw_model, cfg, env, device)
    trainer = Trainer(cfg, model, raw_model, tasks, env, device, callbacks, run_dir)
    trainer.start_run()
    try:
        last = trainer.run_stages(cfg.stages)
        val = {k: v for k, v in last.items() if k.startswith("nrmse/")}  # the last stage's final evaluation
        with trainer.eval_weights():
            objective, net = trainer.objective, raw_model
            results = evaluate_suite(lambda b: objective.predict(net, b), raw_model, tasks, "test", device,
                                     trainer.autocast, cfg.trainer.batch_size, cfg.data.eval_samples,
                                     cfg.data.preload_max_gb, env.rank, env.world_size)
        trainer.log_record({"step": trainer.global_step, "kind": "eval", "stage": "final", "split": "test",
                            **scalar_metrics(results["model"])})
    finally:
        trainer.end_run()
    if env.is_main:
        stage = last_trained_stage(cfg.stages)
        write_results(run_dir / "eval", "final_test", results, tasks,
                      {"run": str(run_dir), "checkpoint": f"checkpoints/{stage}/final", "split": "test",
                       "device": str(device), "eval_samples": cfg.data.eval_samples, "model": cfg.model._target_,
                       "parameters": n_params, "step": trainer.global_step,
                       "train_seconds": round(trainer.train_seconds, 1),
                       "global_batch": cfg.trainer.batch_size * cfg.trainer.accum_steps * env.world_size})
        print(summary_table(tasks, val, results, trainer.epoch_losses), flush=True)
        print(f"run directory: {run_dir.resolve()} (evaluation: eval/final_test.md)", flush=True)
    out: dict[str, Any] = {f"val/{k}": v for k, v in val.items()}
    out.update({f"test/{k}": v for k, v in scalar_metrics(results["model"]).items()})
    out.update(step=trainer.global_step, epoch_losses=trainer.epoch_losses, run_dir=str(run_dir), results=results)
    return out
