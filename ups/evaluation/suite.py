"""The evaluation a run ends with, and ``python -m ups.evaluate`` repeats: the model beside persistence
and the training-mean field, every PDEBench metric, written as JSON and a markdown table.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import platform
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ups.data.datasets import TrajectoryDataset
from ups.data.tasks import TaskData
from ups.evaluation.baselines import MeanField, persistence
from ups.evaluation.evaluate import Predictor, evaluate
from ups.evaluation.pdebench_metrics import METRICS
from ups.training.failures import writing

log = logging.getLogger(__name__)

PREDICTORS = ("model", "persistence", "mean_field")


@dataclass
class EvalPlan:
    """What an evaluation scores and how: the tasks' ``split`` (``eval_samples`` trajectories per task,
    None: all), the device and precision, the batch size and this process's share of the ranks. The
    closing evaluation, ``python -m ups.evaluate`` and the stage table all take one."""

    tasks: Sequence[TaskData]
    split: str
    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    batch_size: int
    eval_samples: int | None
    preload_max_gb: float
    rank: int = 0
    world_size: int = 1

    def sets(self) -> list[TrajectoryDataset]:
        """The split's trajectories, one dataset per task."""
        return [TrajectoryDataset(t, self.split, self.eval_samples, self.preload_max_gb) for t in self.tasks]

    def evaluate(self, predict: Predictor, model: nn.Module | None, sets: Sequence[TrajectoryDataset]) -> dict:
        """Every metric of ``predict`` on ``sets`` (:func:`ups.evaluation.evaluate.evaluate` with ``full``)."""
        return evaluate(
            predict, model, sets, self.device, self.autocast, self.batch_size, self.rank, self.world_size, full=True
        )


def evaluate_suite(predict: Predictor, model: nn.Module, plan: EvalPlan) -> dict[str, dict]:
    """Full metrics of the model and of the two trivial predictors on the plan's split, by predictor name."""
    sets = plan.sets()
    return {
        "model": plan.evaluate(predict, model, sets),
        "persistence": plan.evaluate(persistence, None, sets),
        "mean_field": plan.evaluate(MeanField(plan.tasks, plan.preload_max_gb), None, sets),
    }


def _fmt(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def markdown(results: dict[str, dict], tasks: Sequence[TaskData], meta: dict) -> str:
    """Tables: rollout nRMSE of the model against the trivial predictors, then every metric of the model."""
    m = results["model"]
    lines = [f"# Evaluation: {meta.get('checkpoint', '')} on the {meta.get('split', '')} split", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += [
        "",
        "Physical units; conditioning frames excluded; each sample weighs the same. Persistence is "
        "not defined for steady tasks (–).",
        "",
        "## Rollout nRMSE against the trivial predictors",
        "",
        "| task | model | model, one step | persistence | training-mean field |",
        "|---|---|---|---|---|",
    ]
    for name in [t.name for t in tasks] + ["mean"]:
        lines.append(
            f"| {name} | {_fmt(m.get(f'nrmse/{name}'))} | {_fmt(m.get(f'one_step/nrmse/{name}'))} | "
            f"{_fmt(results['persistence'].get(f'nrmse/{name}'))} | "
            f"{_fmt(results['mean_field'].get(f'nrmse/{name}'))} |"
        )
    for title, prefix in (("autoregressive rollout", ""), ("one step ahead", "one_step/")):
        lines += [
            "",
            f"## Every metric of the model, {title}",
            "",
            "| task | channel | " + " | ".join(METRICS) + " |",
            "|---|---|" + "---|" * len(METRICS),
        ]
        for t in tasks:
            rows = [("all", "")] + ([(c, f"/{c}") for c in t.family.channels] if t.channels > 1 else [])
            for label, suffix in rows:
                lines.append(
                    f"| {t.name} | {label} | "
                    + " | ".join(_fmt(m.get(f"{prefix}{k}/{t.name}{suffix}")) for k in METRICS)
                    + " |"
                )
    lines += ["", "## nRMSE against the rollout step (model)", ""]
    for t in tasks:
        curve = m.get(f"nrmse_t/{t.name}") or []
        shown = sorted({0, len(curve) // 4, len(curve) // 2, 3 * len(curve) // 4, len(curve) - 1}) if curve else []
        lines.append(f"- {t.name}: " + ", ".join(f"step {i + 1}: {_fmt(curve[i])}" for i in shown))
    return "\n".join(lines) + "\n"


def write_tables(out_dir: str | Path, stem: str, results: dict, meta: dict, text: Callable[[dict], str]) -> list[Path]:
    """``<stem>.json`` (``results`` and ``meta`` stamped with the time and host) and ``<stem>.md``
    (``text(meta)``) in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "written": dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node()}
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    with writing(paths[0]):
        paths[0].write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=float))
    with writing(paths[1]):
        paths[1].write_text(text(meta))
    return paths


def write_results(
    out_dir: str | Path, stem: str, results: dict[str, dict], tasks: Sequence[TaskData], meta: dict
) -> list[Path]:
    """``<stem>.json`` (every number), ``<stem>.md`` (the tables) and, with matplotlib,
    ``<stem>_nrmse_vs_step.png`` in ``out_dir``; returns their paths."""
    paths = write_tables(out_dir, stem, results, meta, lambda m: markdown(results, tasks, m))
    try:
        from ups.evaluation.field_plots import plot_error_vs_step_variants

        curves = {
            name: {t.name: results.get(name, {}).get(f"nrmse_t/{t.name}") or [] for t in tasks} for name in PREDICTORS
        }
        plot = plot_error_vs_step_variants(curves, Path(out_dir) / f"{stem}_nrmse_vs_step.png")
        if plot is not None:  # None: steady tasks only
            paths.append(plot)
    except ImportError as err:  # matplotlib is optional: the numbers are in the JSON anyway
        log.info("%s_nrmse_vs_step.png not drawn: %s", stem, err)
    return paths


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The numbers of a metrics dict (the per-step lists left out), for metrics.jsonl and W&B."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
