"""Where a latent model's error comes from, per task: rollout and one-step error beside the floors
that its autoencoder sets (``python -m ups.diagnose``; docs/evaluation.md).

Every number is nRMSE (PDEBench's, per sample, channel and frame) in **normalised units**, on the
same trajectories and, for the floors, the same windows as the operator's own one-step error
beside them. For a model with a latent encoder (``ModelSpec.latent``; ``encode``/``step``/``decode``):

- ``true_next_latent``: decode(encode(true next context)) against the true next frame: the error if
  the operator predicted the true next latent perfectly;
- ``decoder_floor``: the best found that the decoder expresses for the true next frame: Adam on
  the latent tokens (:func:`ups.objectives.latent_heads.invert_decoder`) starting from the
  operator's latent, and never worse than that start (``operator_decode``) per window;
- ``reconstruction``: decode(encode(context)) against the last context frame.

When the run's objective predicts the change (``residual``), the decoder's output is a change: the
decode of a latent whose newest frame is frame t is compared with frame t after adding frame t-1
(the operator's latent: frame t+1, plus the last context frame). Reconstruction then needs two
context frames; with one it is not defined. Steady tasks have no next context: only the floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ups.data.datasets import TrajectoryDataset, task_keys
from ups.data.tasks import TaskData
from ups.evaluation.evaluate import rollout
from ups.evaluation.metrics import nrmse
from ups.models.spec import spec_of
from ups.objectives.latent_heads import invert_decoder, next_context
from ups.objectives.next_step import frames_per_call

FLOORS = ("operator_decode", "true_next_latent", "decoder_floor", "reconstruction")


@dataclass
class DiagnosisSettings:
    """How much to measure: trajectories per task, time positions per trajectory for the floors, inversion."""

    eval_samples: int | None = 8
    windows_per_trajectory: int | None = 8  # evenly spaced frames per trajectory for the floors; None: all
    invert_steps: int = 50
    invert_lr: float = 0.05
    batch_size: int = 8


def _frame_nrmse(pred: Tensor, y: Tensor) -> Tensor:
    """Per-sample nRMSE of one frame (B, P, C), normalised units."""
    return nrmse(pred.float()[:, None], y.float()[:, None])


def _positions(initial_step: int, n_steps: int, per_traj: int | None) -> list[int]:
    """Indices of the predicted frames the floors are measured at, evenly spaced."""
    ts = list(range(initial_step, n_steps))
    if per_traj is None or per_traj >= len(ts):
        return ts
    return sorted({ts[round(i * (len(ts) - 1) / max(1, per_traj - 1))] for i in range(per_traj)})


@torch.no_grad()
def diagnose_task(
    predict: Any,
    model: nn.Module,
    task: TaskData,
    residual: bool,
    split: str,
    device: torch.device,
    settings: DiagnosisSettings,
    preload_max_gb: float = 2.0,
) -> dict[str, float]:
    """One task's numbers: ``rollout``, ``one_step``, ``train_rollout`` (the rollout on as many training
    trajectories) and, for latent models, the floors (NaN where undefined)."""
    keys = task_keys(task, device)
    latent = spec_of(model).latent is not None
    # The floors decode one frame; a bundled model's decoder gives several, so they stay NaN for it.
    floors = latent and task.name not in frames_per_call(model)
    residual = residual and not task.family.steady
    k = task.initial_step
    sums: dict[str, list[Tensor]] = {}
    # The same rollout on trajectories it trained on: far below the split's, the family is short of data
    for traj, batch in _batches(task, "train", keys, device, settings, preload_max_gb):
        pred = rollout(predict, batch, traj, k)
        sums.setdefault("train_rollout", []).append(nrmse(pred.float(), traj[:, k:].float()))
    for traj, batch in _batches(task, split, keys, device, settings, preload_max_gb):
        for name, forced in (("rollout", False), ("one_step", True)):
            pred = rollout(predict, batch, traj, k, teacher_forced=forced)
            sums.setdefault(name, []).append(nrmse(pred.float(), traj[:, k:].float()))
        if floors:
            for t in _positions(k, task.n_steps, settings.windows_per_trajectory):
                for name, err in _floors(model, task, batch, traj, t, residual, settings).items():
                    sums.setdefault(name, []).append(err)
    out = {name: float(torch.cat(v).mean()) for name, v in sums.items()}
    if latent:
        out = {**{n: float("nan") for n in FLOORS}, **out}
    return out


def _batches(task: TaskData, split: str, keys: dict, device: torch.device, settings: DiagnosisSettings, gb: float):
    """(trajectories (B, T, P, C), batch keys) of the split's first ``eval_samples`` trajectories."""
    ds = TrajectoryDataset(task, split, settings.eval_samples, gb)
    for start in range(0, len(ds), settings.batch_size):
        items = [ds[j] for j in range(start, min(len(ds), start + settings.batch_size))]
        traj = torch.stack([it["traj"] for it in items]).to(device)
        yield traj, {**keys, "cond": torch.stack([it["cond"] for it in items]).to(device)}


def _floors(
    model: nn.Module, task: TaskData, batch: dict, traj: Tensor, t: int, residual: bool, settings: DiagnosisSettings
) -> dict[str, Tensor]:
    """Per-sample errors at predicted frame ``t`` of a batch of trajectories (B, T, P, C)."""
    b, _, p, c = traj.shape
    k, name, coords, cond = task.initial_step, task.name, batch["coords"], batch["cond"]
    flat = lambda frames: frames.permute(0, 2, 1, 3).reshape(b, p, -1)  # noqa: E731 - (B,k,P,C) -> (B,P,k*C)
    x, y = flat(traj[:, t - k : t]), traj[:, t]
    base = traj[:, t - 1] if residual else torch.zeros_like(y)  # the frame before the target's
    z_pred = model.step(name, model.encode(name, x, coords), cond)
    start = _frame_nrmse(base + model.decode(name, z_pred, coords), y)
    z_inv = invert_decoder(model, name, z_pred, coords, y - base, settings.invert_steps, settings.invert_lr)
    out = {
        "operator_decode": start,
        "decoder_floor": torch.minimum(
            start, _frame_nrmse(base + model.decode(name, z_inv.to(z_pred.dtype), coords), y)
        ),
    }
    if not task.family.steady:
        z_next = model.encode(name, next_context(x, y), coords)
        out["true_next_latent"] = _frame_nrmse(base + model.decode(name, z_next, coords), y)
        if not residual or k >= 2:  # a change needs the frame before the last context frame
            before = traj[:, t - 2] if residual else torch.zeros_like(y)
            out["reconstruction"] = _frame_nrmse(
                before + model.decode(name, model.encode(name, x, coords), coords), traj[:, t - 1]
            )
    return out


def diagnose(
    predict: Any,
    model: nn.Module,
    tasks: Sequence[TaskData],
    residual: bool,
    split: str,
    device: torch.device,
    settings: DiagnosisSettings,
    preload_max_gb: float = 2.0,
) -> dict[str, dict]:
    """Every task's numbers (see :func:`diagnose_task`), by task name, plus ``mean`` over tasks."""
    model.eval()
    out = {t.name: diagnose_task(predict, model, t, residual, split, device, settings, preload_max_gb) for t in tasks}
    metrics = sorted({m for v in out.values() for m in v})
    out["mean"] = {m: sum(v.get(m, float("nan")) for v in out.values()) / len(tasks) for m in metrics}
    return out


_COLUMNS = [
    ("rollout", "rollout"),
    ("train_rollout", "rollout, training trajectories"),
    ("one_step", "one step"),
    ("operator_decode", "operator, floor windows"),
    ("true_next_latent", "true next latent"),
    ("decoder_floor", "decoder floor"),
    ("reconstruction", "reconstruction"),
]


def markdown(results: dict[str, dict], meta: dict) -> str:
    """The diagnosis as a markdown table with what each column means."""
    cols = [(key, label) for key, label in _COLUMNS if any(key in v for v in results.values())]
    lines = (
        ["# Diagnosis", ""]
        + [f"- {k}: {v}" for k, v in meta.items()]
        + [
            "",
            "nRMSE in **normalised units** (each field scaled by its training mean and std), per sample, channel "
            "and frame; conditioning frames excluded; not comparable with eval/final_test's physical units.",
            "",
            "| task | " + " | ".join(label for _, label in cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
    )
    fmt = lambda v: "–" if v is None or v != v else f"{v:.4g}"  # noqa: E731
    for task, row in results.items():
        lines.append(f"| {task} | " + " | ".join(fmt(row.get(key)) for key, _ in cols) + " |")
    if len(cols) > 2:
        lines += [
            "",
            "- rollout / one step: the run's own predictions (autoregressive / true frames as context), "
            "every frame of each trajectory.",
            "- rollout, training trajectories: the same on as many trajectories of the training split; far "
            "below the rollout, the model fits what it trained on and the family is short of data "
            "(docs/results.md, stage 13).",
            "- operator, floor windows: its one-step error on the frames the floors use (a decoder floor never "
            "exceeds it; the floor starts there).",
            "- true next latent: decode(encode(true next context)) against the next frame.",
            f"- decoder floor: the best of {meta.get('invert_steps')} Adam steps on the latent tokens "
            "(from the operator's latent) and their start, decoding to the next frame.",
            "- reconstruction: decode(encode(context)) against the last context frame.",
            "- residual objective: a decode is a change and is added to the frame before its target; "
            "reconstruction then needs initial_step >= 2 (else –). Steady tasks: floor only (–).",
        ]
    return "\n".join(lines) + "\n"
