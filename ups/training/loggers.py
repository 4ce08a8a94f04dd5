"""Metric sinks: ``metrics.jsonl`` in the run directory, and W&B. Each writes on rank 0 only.

metrics.jsonl schema (one JSON object per line; docs/configuration.md):
  every record: ``step`` (optimizer steps done over all stages), ``stage_step`` (within the stage),
                ``kind`` ("train" | "eval"), ``stage``, ``time``
  train:  ``loss``, ``loss/<task>``, ``samples_per_s``, ``lr``, ``epoch``, ``grad_norm``,
          ``batch_size``, ``accum_steps``, ``world_size``, ``global_batch``, ``skipped_steps``,
          ``peak_memory_mb`` (rank 0: CUDA's peak allocated, or on CPU the resident set at the record)
  eval:   ``split`` ("val" | "test"), ``nrmse/<task>`` for each task, ``nrmse/mean``; the closing
          test record also holds every metric of ``ups.evaluation`` (``<metric>/<task>``)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import OmegaConf

from ups.training.callbacks import Callback
from ups.training.failures import writing

if TYPE_CHECKING:
    from ups.training.step_totals import Agreed
    from ups.training.trainer import Trainer

log = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    """Memory in MB: the peak allocated by torch on a CUDA device; on CPU the process's resident set
    now (the report takes the largest over a run's records: the process-wide peak, ru_maxrss, would
    carry over from earlier jobs of a sweep run in the same process)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/statm") as f:  # Linux: pages; the second field is the resident set
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the process's peak is the best there is
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS reports bytes


class TrainWindow:
    """The optimizer steps since the last ``train`` record, which that record averages over."""

    def __init__(self) -> None:
        self.grad_norm = float("nan")  # the last step's; kept across records
        self.reset()

    def reset(self) -> None:
        self.loss, self.samples, self.steps, self.t0 = 0.0, 0, 0, time.perf_counter()
        self.tasks: dict[str, list[float]] = {}

    def add(self, agreed: "Agreed", samples: int) -> None:
        """One optimizer step: its agreed loss, per-task losses and gradient norm, and its samples."""
        self.loss += agreed.loss
        self.samples += samples
        self.steps += 1
        self.grad_norm = agreed.grad_norm
        for name, value in agreed.task_losses.items():
            self.tasks.setdefault(name, []).append(value)

    def fields(self, trainer: "Trainer") -> dict:
        """The ``train`` record's fields (the schema above), in their order."""
        t, world = trainer.cfg.trainer, trainer.env.world_size
        elapsed = time.perf_counter() - self.t0
        record = dict(
            epoch=trainer.epoch,
            loss=self.loss / self.steps,
            samples_per_s=self.samples / max(elapsed, 1e-9),
            lr=trainer.scheduler.get_last_lr()[0],
            grad_norm=self.grad_norm,
            batch_size=t.batch_size,
            accum_steps=t.accum_steps,
            world_size=world,
            global_batch=t.batch_size * t.accum_steps * world,
            skipped_steps=trainer.state.skipped_steps,
            peak_memory_mb=peak_memory_mb(trainer.device),
        )
        record.update({f"loss/{k}": sum(v) / len(v) for k, v in self.tasks.items()})
        return record


class JsonlLogger(Callback):
    """Appends every record to ``<run_dir>/metrics.jsonl``; a resumed run continues the same file."""

    def __init__(self, filename: str = "metrics.jsonl"):
        self.filename, self.path = filename, None

    def on_run_start(self, trainer: "Trainer") -> None:
        self.path = Path(trainer.run_dir) / self.filename if trainer.env.is_main else None

    def on_log(self, trainer: "Trainer", record: dict) -> None:
        if self.path is not None:
            with writing(self.path), self.path.open("a") as f:
                f.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")


STEP_KEY = "trainer/step"  # every W&B chart's x axis


def wandb_keys(record: dict) -> dict[str, float]:
    """A record's numbers under ``train/``, ``startup/``, ``val/`` or ``test/``, so the splits never share a key."""
    prefix = record["kind"] if record["kind"] in ("train", "startup") else record.get("split", "val")
    skip = {"step", "kind", "split", "stage", "time"}
    return {
        f"{prefix}/{k}": v
        for k, v in record.items()
        if k not in skip
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and not (isinstance(v, float) and math.isnan(v))
    }


class WandbLogger(Callback):
    """One W&B run per job, from rank 0, in the run directory, open from the first stage to the test record.

    The mode is passed only when set, so ``WANDB_MODE=offline`` works without an account. The run id
    is stored in the run directory so a restart continues the same W&B run. ``group`` and ``name``
    default to the sweep and the job's overrides in a multirun (``conf/logger/wandb.yaml``).
    """

    def __init__(
        self,
        project: str = "ups",
        entity: str | None = None,
        mode: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
        group: str | None = None,
        name: str | None = None,
    ):
        self.settings = dict(project=project, entity=entity, tags=list(tags), group=group, name=name)
        self.mode, self.run = mode, None

    def on_run_start(self, trainer: "Trainer") -> None:
        if not trainer.env.is_main or self.run is not None:
            return
        import wandb

        id_file = Path(trainer.run_dir) / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        kwargs = dict(
            self.settings,
            dir=str(trainer.run_dir),
            id=run_id,
            resume="allow",
            config=OmegaConf.to_container(trainer.cfg, resolve=True),
        )  # wandb rejects DictConfig
        if self.mode:
            kwargs["mode"] = self.mode
        self.run = wandb.init(**kwargs)
        # The x axis is the trainer's step as a value, not W&B's own step: W&B drops a record whose step
        # is not above the last one, so the steps a restart redoes (their new values are the ones that
        # count) were lost from its charts.
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)

    def on_log(self, trainer: "Trainer", record: dict) -> None:
        if self.run is not None:
            self.run.log({**wandb_keys(record), "stage": record.get("stage"), STEP_KEY: record["step"]})

    def on_run_end(self, trainer: "Trainer") -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
