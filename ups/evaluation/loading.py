"""Rebuild a finished run for evaluation: its config, data, model with a checkpoint's weights, and objective."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ups.build import Compute, build_compute, build_run
from ups.data.tasks import TaskData
from ups.errors import ConfigError
from ups.objectives import Objective
from ups.training.checkpoint import CheckpointError, last_trained_stage, load_eval_weights, run_checkpoint

log = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    cfg: Any
    tasks: list[TaskData]
    model: torch.nn.Module
    objective: Objective  # the last trained stage's
    checkpoint: Path
    source: str  # where the weights came from (EMA or not)
    compute: Compute  # the run's precision and attention backend, on the evaluation's device
    objectives: dict[str, Objective]  # every stage's, by name

    @property
    def autocast(self) -> Any:
        """The forward passes' context, as the run computed (bf16 autocast, attention backend)."""
        return self.compute.autocast

    def predict(self, batch: dict) -> torch.Tensor:
        return self.objective.predict(self.model, batch)


def load_run(
    run_dir: str | Path,
    which: str = "final",
    data_dir: str | None = None,
    device: torch.device | str | None = None,
    allow_unverified: bool = False,
) -> LoadedRun:
    """The run's model at ``checkpoints/<last stage>/<which>`` on its own data, in eval mode.

    The data is read from the run's ``paths.data_dir`` (or ``data_dir``) and never generated.
    Raises FileNotFoundError naming what is missing (config, checkpoint, data), ConfigError for an
    unreadable config.yaml, CheckpointError for a checkpoint that does not fit the config's model.
    ``device``: a device or ``auto``/``cpu``/``cuda`` (default ``auto``), resolved as training resolves it.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"no config.yaml in {run_dir}: not a UPS run directory")
    try:
        cfg = OmegaConf.load(run_dir / "config.yaml")
        cfg.stages, cfg.model, cfg.data, cfg.paths  # noqa: B018 - the keys evaluation reads
    except Exception as err:  # noqa: BLE001 - YAML and OmegaConf raise many kinds
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{run_dir / 'config.yaml'} cannot be read as a UPS run config ({first}); restore it "
            "from the run's checkpoint with python -m ups.training.checkpoint, or from a backup"
        ) from None
    checkpoint = run_checkpoint(run_dir, cfg.stages, which)
    weights, source = load_eval_weights(checkpoint, allow_unverified)
    cfg.data.generate = False  # never write synthetic files into a data dir just to evaluate
    cfg.paths.data_dir = str(data_dir or cfg.paths.data_dir)
    if not Path(cfg.paths.data_dir).is_dir():
        raise FileNotFoundError(
            f"the run's data directory {cfg.paths.data_dir} (paths.data_dir in config.yaml) "
            "is gone; point at the data files (python -m ups.evaluate ... data_dir=DIR; the report: --data-dir DIR)"
        )
    compute = build_compute(cfg.hardware, device=device if device is not None else "auto")
    built = build_run(cfg, run_dir, compute=compute, seed=False)  # the weights are loaded next
    model, device = built.model.eval(), compute.device
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:  # missing/unexpected keys or size mismatches: config.yaml is of another model
        lines = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()]
        raise CheckpointError(
            f"{checkpoint} does not fit the model that {run_dir / 'config.yaml'} describes "
            f"({cfg.model.get('_target_')}): {len(lines)} differences, e.g. {lines[0][:160] if lines else err}. "
            "The config and the checkpoint are from different runs; restore the run's config.yaml"
        ) from None
    stage = last_trained_stage(cfg.stages)
    log.info("evaluating %s on %s", source, device)
    return LoadedRun(cfg, built.tasks, model, built.objectives[stage], checkpoint, source, compute, built.objectives)
