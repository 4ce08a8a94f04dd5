"""Metric sinks: ``metrics.jsonl`` in the run directory, and W&B. Each writes on rank 0 only.

metrics.jsonl schema (one JSON object per line; docs/configuration.md):
  every record: ``step`` (optimizer steps done), ``kind`` ("train" | "eval"), ``stage``, ``time``
  train:  ``loss``, ``loss/<task>``, ``samples_per_s``, ``lr``, ``epoch``, ``grad_norm``,
          ``batch_size``, ``accum_steps``, ``world_size``, ``global_batch``
  eval:   ``nrmse/<task>`` for each task, ``nrmse/mean``, ``split``
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from ups.training.callbacks import Callback

if TYPE_CHECKING:
    from ups.training.trainer import Trainer

log = logging.getLogger(__name__)


class JsonlLogger(Callback):
    """Appends every record to ``<run_dir>/metrics.jsonl``; a resumed run continues the same file."""

    def __init__(self, run_dir: str | Path, is_main: bool):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.is_main = is_main

    def on_log(self, trainer: "Trainer", record: dict) -> None:
        if not self.is_main:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")


class WandbLogger(Callback):
    """One W&B run per job, from rank 0, in the run directory.

    The mode is passed only when the config sets it, so ``WANDB_MODE=offline`` works without an
    account. The run id is stored in the run directory so a restart continues the same W&B run.
    """

    def __init__(self, cfg: Any, run_dir: str | Path, is_main: bool):
        self.cfg, self.run_dir, self.is_main, self.run = cfg, Path(run_dir), is_main, None

    def on_fit_start(self, trainer: "Trainer") -> None:
        if not self.is_main or self.run is not None:
            return
        import wandb

        id_file = self.run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        kwargs = dict(project=self.cfg.logger.project, entity=self.cfg.logger.entity, dir=str(self.run_dir),
                      id=run_id, resume="allow", tags=list(self.cfg.logger.tags),
                      config=OmegaConf.to_container(self.cfg, resolve=True))  # wandb rejects DictConfig
        if self.cfg.logger.mode:
            kwargs["mode"] = self.cfg.logger.mode
        self.run = wandb.init(**kwargs)

    def on_log(self, trainer: "Trainer", record: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    def on_fit_end(self, trainer: "Trainer") -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
