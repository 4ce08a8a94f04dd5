"""The staged trainer's evaluation table: every variant the trained stages offer, side by side.

Variants, each a predictor scored by ``ups.evaluation.evaluate`` on the same trajectories:
the operator alone; the operator corrected by the diffusion stage's sampler; by the consistency
student; test-time correction (TTC) over the corrector's candidates; the steady prior (steady tasks
only); and the trivial predictors (persistence, training-mean field). Each gets its rollout nRMSE
per task, its network evaluations per rollout step (NFE) and its wall-clock time. A training run
writes ``eval/stages.json`` and ``eval/stages.md``, with ``stages_nrmse_vs_step.png`` and one
``stages_fields_<task>.png`` per task (truth, predictions, errors on the first trajectory);
``python -m ups.evaluate`` the same as ``eval/<checkpoint>_<split>_stages*``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ups.data.datasets import TrajectoryDataset, task_keys
from ups.data.tasks import TaskData
from ups.distributed.collectives import all_reduce_max, all_reduce_sum
from ups.evaluation.baselines import MeanField, persistence
from ups.evaluation.evaluate import Predictor, rollout
from ups.evaluation.suite import EvalPlan, write_tables
from ups.evaluation.ttc import TestTimeCorrection
from ups.objectives import Objective

log = logging.getLogger(__name__)


@dataclass
class Variant:
    """One row block of the table: a predictor, its NFE per step, the tasks it is reported on."""

    name: str
    predict: Predictor
    evaluations: int | None  # None: no network (trivial predictors)
    steady_only: bool = False
    corrects: bool = False  # a corrector: on steady tasks it returns the operator's prediction
    in_figures: bool = True  # drawn in the field figures (which show at most 5 variants)
    extra: dict = field(default_factory=dict)


@dataclass
class TableContext:
    """What a role's row builder may use: the model, the tasks and the table's settings."""

    model: nn.Module
    tasks: Sequence[TaskData]
    ttc_candidates: int
    mean_of: int

    def row(self, name: str, objective: Objective, **kw: Any) -> Variant:
        """The row of ``objective``'s own predictions."""
        return Variant(name, lambda b, o=objective: o.predict(self.model, b), objective.evaluations, **kw)


# Row builders by ``Objective.table_role``, in the table's order: each gets the trained stages'
# objectives of its role (in stage order) and returns their rows. A new kind of head registers its
# own here (or takes the generic row); nothing below picks rows by an objective's class.
RowBuilder = Callable[[dict[str, Objective], TableContext], list[Variant]]
ROW_BUILDERS: dict[str, RowBuilder] = {}


def rows_for(role: str) -> Callable[[RowBuilder], RowBuilder]:
    """Register the row builder of the stages whose objective has ``table_role == role``."""

    def register(fn: RowBuilder) -> RowBuilder:
        ROW_BUILDERS[role] = fn
        return fn

    return register


@rows_for("operator")
def _operator_rows(objs: dict[str, Objective], ctx: TableContext) -> list[Variant]:
    return [ctx.row("operator", list(objs.values())[-1])]  # the last stage that trained the operator


@rows_for("corrector")
def _corrector_rows(objs: dict[str, Objective], ctx: TableContext) -> list[Variant]:
    out = []
    for obj in objs.values():
        out.append(ctx.row(f"operator + {obj.label}", obj, corrects=True))
        mean = copy.copy(obj)  # the mean of several corrections estimates the conditional mean
        mean.samples = ctx.mean_of
        out.append(ctx.row(f"operator + {obj.label}, mean of {ctx.mean_of}", mean, corrects=True, in_figures=False))
    best = min(objs.values(), key=lambda o: o.evaluations)  # TTC over the cheapest corrector's candidates
    ttc = TestTimeCorrection(best, ctx.model, ctx.tasks, ctx.ttc_candidates)
    out.append(
        Variant(
            f"operator + TTC ({ctx.ttc_candidates} {best.head} candidates + uncorrected)",
            ttc,
            ttc.evaluations,
            corrects=True,
            extra={"ttc": ttc},
        )
    )
    return out


@rows_for("steady_prior")
def _steady_rows(objs: dict[str, Objective], ctx: TableContext) -> list[Variant]:
    if not any(t.family.steady for t in ctx.tasks):
        return []
    return [ctx.row("steady prior", obj, steady_only=True) for obj in objs.values()]


def _generic_rows(objs: dict[str, Objective], ctx: TableContext) -> list[Variant]:
    """A role nobody registered: one row per stage, named by the stage, its own predictions."""
    return [
        ctx.row(f"{name} ({type(obj).__name__})", obj, steady_only=not obj.applies(False)) for name, obj in objs.items()
    ]


def variants(
    built: Mapping[str, Objective],
    model: nn.Module,
    tasks: Sequence[TaskData],
    ttc_candidates: int = 4,
    mean_of: int = 4,
    preload_max_gb: float = 2.0,
) -> list[Variant]:
    """The variants the run's trained stages offer, by role in the registered order, then the trivial
    predictors. ``built``: the trained stages' objectives by name (``ups.build.trained``)."""
    ctx = TableContext(model, tasks, ttc_candidates, mean_of)
    by_role: dict[str, dict[str, Objective]] = {}
    for name, obj in built.items():
        by_role.setdefault(obj.table_role, {})[name] = obj
    out: list[Variant] = []
    for role in [*ROW_BUILDERS, *(r for r in by_role if r not in ROW_BUILDERS)]:
        if role in by_role:
            out += ROW_BUILDERS.get(role, _generic_rows)(by_role[role], ctx)
    out.append(Variant("persistence", persistence, None))
    out.append(Variant("training-mean field", MeanField(tasks, preload_max_gb), None))
    return out


def evaluate_variants(vs: Sequence[Variant], model: nn.Module, plan: EvalPlan) -> dict:
    """{variant: {"metrics": evaluate(...) with full=True, "seconds": wall-clock, "nfe": ..., ...}}."""
    tasks, device, sets = plan.tasks, plan.device, plan.sets()
    results = {}
    for v in vs:
        chosen = [s for s in sets if s.task.family.steady] if v.steady_only else sets
        t0 = time.perf_counter()
        metrics = plan.evaluate(v.predict, model if v.evaluations else None, chosen)
        seconds = float(all_reduce_max(torch.tensor(time.perf_counter() - t0, device=device)))
        row = {"metrics": metrics, "seconds": seconds, "nfe": v.evaluations}
        if "ttc" in v.extra:  # summed over the ranks' shares of the samples (each rank has every task)
            stats = v.extra["ttc"].stats
            keys = ("samples", "kept_uncorrected", "reward_gain")
            sums = all_reduce_sum(
                torch.tensor(
                    [[stats.get(t.name, {}).get(k, 0.0) for k in keys] for t in tasks],
                    dtype=torch.float64,
                    device=device,
                )
            ).tolist()
            row["ttc"] = {t.name: dict(zip(keys, row_sums)) for t, row_sums in zip(tasks, sums) if row_sums[0]}
        results[v.name] = row
        log.info(
            "evaluated %s in %.1f s: %s",
            v.name,
            seconds,
            "  ".join(f"{k.split('/')[1]}={m:.4g}" for k, m in metrics.items() if k.startswith("nrmse/")),
        )
    return results


def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def markdown(results: dict, tasks: Sequence[TaskData], meta: dict) -> str:
    """The table: rollout nRMSE per task for every variant, with NFE per step and time."""
    names = [t.name for t in tasks]
    lines = ["# Staged trainer: evaluation of every variant", ""] + [f"- {k}: {v}" for k, v in meta.items()]
    lines += [
        "",
        "Rollout nRMSE in physical units, conditioning frames excluded (steady tasks: the one "
        "solution). NFE: network evaluations per predicted frame (operator = 1, each denoiser or "
        "student call = 1). Time: wall-clock of the variant's whole evaluation on this split. "
        "– : not defined (persistence on steady tasks) or not this variant's task. The correctors "
        "(diffusion, consistency, TTC) apply to time-dependent tasks; on steady ones they return the "
        "operator's prediction.",
        "",
        "| variant | " + " | ".join(names) + " | NFE per step | time (s) |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    for name, row in results.items():
        m = row["metrics"]
        lines.append(
            f"| {name} | "
            + " | ".join(_fmt(m.get(f"nrmse/{t}")) for t in names)
            + f" | {row['nfe'] if row['nfe'] is not None else '–'} | {row['seconds']:.1f} |"
        )
    for name, row in results.items():
        for task, s in (row.get("ttc") or {}).items():
            if s["samples"]:
                lines.append(
                    f"\n{name}, {task}: kept the uncorrected prediction in {s['kept_uncorrected']:.0f} of "
                    f"{s['samples']:.0f} sample-steps; mean physics-reward gain over the uncorrected "
                    f"prediction {s['reward_gain'] / s['samples']:.4g}"
                )
    return "\n".join(lines) + "\n"


def first_trajectories(
    vs: Sequence[Variant],
    tasks: Sequence[TaskData],
    split: str,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    preload_max_gb: float,
) -> dict:
    """Per task: (context, truth, {variant: prediction}) of its first trajectory, physical units."""
    out = {}
    for task in tasks:
        item = TrajectoryDataset(task, split, 1, preload_max_gb)[0]
        traj, cond = item["traj"][None].to(device), item["cond"][None].to(device)
        batch = {**task_keys(task, device), "cond": cond}
        in_mean, in_std, out_mean, out_std = (torch.as_tensor(a, device=device) for a in task.stats.arrays())
        preds = {}
        for v in vs:  # the networks only, and on steady tasks not the correctors (the operator again)
            if (
                v.evaluations is None
                or not v.in_figures
                or (v.steady_only and not task.family.steady)
                or (v.corrects and task.family.steady)
            ):
                continue
            with autocast():
                pred = rollout(v.predict, batch, traj, task.initial_step)
            if pred is not None:
                preds[v.name] = (pred[0].float() * out_std + out_mean).cpu()
        k = task.initial_step
        out[task.name] = ((traj[0, :k] * in_std + in_mean).cpu(), (traj[0, k:] * out_std + out_mean).cpu(), preds)
    return out


def write_stage_table(
    out_dir: str | Path, stem: str, results: dict, tasks: Sequence[TaskData], meta: dict, fields: dict | None = None
) -> list[Path]:
    """``<stem>.json``, ``<stem>.md`` and, with matplotlib, ``<stem>_nrmse_vs_step.png`` and
    ``<stem>_fields_<task>.png``; returns the paths written."""
    out = Path(out_dir)
    paths = write_tables(out, stem, results, meta, lambda m: markdown(results, tasks, m))
    try:
        from ups.evaluation.field_plots import plot_error_vs_step_variants, plot_fields

        curves = {
            name: {t.name: row["metrics"].get(f"nrmse_t/{t.name}") or [] for t in tasks}
            for name, row in results.items()
        }
        plot = plot_error_vs_step_variants(curves, out / f"{stem}_nrmse_vs_step.png")
        paths += [plot] if plot is not None else []
        for task in tasks:
            if fields and task.name in fields:
                context, truth, preds = fields[task.name]
                paths.append(
                    plot_fields(
                        task.name,
                        task.family.dim,
                        task.grid,
                        task.family.channels,
                        task.family.steady,
                        truth,
                        preds,
                        out / f"{stem}_fields_{task.name}.png",
                        context=context,
                    )
                )
    except ImportError as err:  # matplotlib is optional: the numbers are in the JSON anyway
        log.info("stage plots not drawn: %s", err)
    return paths


def has_heads(model: nn.Module) -> bool:
    """Whether the model carries networks of later stages, i.e. the run has a stage table to make."""
    from ups.models.spec import spec_of

    spec = spec_of(model)
    return bool(spec.stage_heads and len(spec.stage_heads(model)))


def evaluate_stages(
    objectives: Mapping[str, Objective],
    model: nn.Module,
    plan: EvalPlan,
    out_dir: Path | None,
    meta: dict,
    stem: str = "stages",
) -> dict:
    """Evaluate every variant as ``plan`` says on all ranks; rank 0 (``out_dir`` set) writes the table and
    plots as ``<out_dir>/<stem>*`` (:func:`write_stage_table`)."""
    tasks = plan.tasks
    vs = variants(objectives, model, tasks, preload_max_gb=plan.preload_max_gb)
    results = evaluate_variants(vs, model, plan)
    # every rank rolls out the figures' trajectories: a sharded model needs all of them in each forward
    fields = first_trajectories(vs, tasks, plan.split, plan.device, plan.autocast, plan.preload_max_gb)
    if out_dir is not None:
        meta = {**meta, "split": plan.split, "eval_samples": plan.eval_samples}
        write_stage_table(out_dir, stem, results, tasks, meta, fields)
    return results
