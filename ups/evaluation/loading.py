"""Rebuild a finished run for evaluation: its config, data, model with a checkpoint's weights, and objective."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ups.data.tasks import TaskData
from ups.objectives import Objective, build_objective
from ups.runner import build_model, build_tasks
from ups.training.checkpoint import last_trained_stage, load_eval_weights, run_checkpoint

log = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    cfg: Any
    tasks: list[TaskData]
    model: torch.nn.Module
    objective: Objective
    checkpoint: Path
    source: str  # where the weights came from (EMA or not)

    def predict(self, batch: dict) -> torch.Tensor:
        return self.objective.predict(self.model, batch)


def load_run(run_dir: str | Path, which: str = "final", data_dir: str | None = None,
             device: torch.device | None = None) -> LoadedRun:
    """The run's model at ``checkpoints/<last stage>/<which>`` on its own data, in eval mode.

    The data is read from the run's ``paths.data_dir`` (or ``data_dir``) and never generated.
    Raises FileNotFoundError naming what is missing (config, checkpoint, data).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"no config.yaml in {run_dir}: not a UPS run directory")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    checkpoint = run_checkpoint(run_dir, cfg.stages, which)
    weights, source = load_eval_weights(checkpoint)
    cfg.data.generate = False  # never write synthetic files into a data dir just to evaluate
    cfg.paths.data_dir = str(data_dir or cfg.paths.data_dir)
    if not Path(cfg.paths.data_dir).is_dir():
        raise FileNotFoundError(f"the run's data directory {cfg.paths.data_dir} (paths.data_dir in config.yaml) "
                                "is gone; point at the data files (python -m ups.evaluate ... data_dir=DIR; the report: --data-dir DIR)")
    tasks = build_tasks(cfg, run_dir)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg.model, tasks, cfg.stages).to(device).eval()
    model.load_state_dict(weights)
    stage = last_trained_stage(cfg.stages)
    objective = build_objective(cfg.stages[stage].objective, f"stages.{stage}")
    log.info("evaluating %s on %s", source, device)
    return LoadedRun(cfg, tasks, model, objective, checkpoint, source)
