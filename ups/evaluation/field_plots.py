"""Field figures of the staged-trainer evaluation: one trajectory of one task, truth against each variant.

``plot_fields`` draws, by the task's shape:

- 1D time-dependent: space-time images (x horizontal, rollout step vertical), a row per variant (and per
  channel, up to 3), columns truth | prediction | |error|. Conditioning frames, when given, sit below
  step 1 in the truth panel, under a dashed line.
- 2D time-dependent: snapshots at up to 4 steps (first, 1/3, 2/3, last); rows are the truth, then each
  variant's prediction and |error|; the channel of largest variance; the last context frame at the left.
- 2D steady (e.g. darcy2d): coefficient (the context) | truth | each prediction, each |error| below it.
- 3D: the mid-plane slice along the last axis, drawn as 2D.
- 1D steady (no such task yet): the 1D figure with its single step.

Truth and predictions share one colour scale, the truth's range, so that a diverging prediction saturates
instead of washing out the truth; the |error| panels share their own scale across variants so that the
variants compare. At most 5 variants are drawn; the suptitle says when more were given.
``plot_error_vs_step_variants``: nRMSE against rollout step, one panel per task, one line per variant.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ups.evaluation.plots import figure

MAX_VARIANTS = 5
MAX_CHANNELS_1D = 3
MAX_SIZE = (16.0, 24.0)  # inches: at most 1600 x 2400 px at dpi 100, whatever the number of rows
# The trivial predictors in grey, so the learned variants stand out (C7 is the cycle's grey: skipped).
BASELINE_STYLE = {"persistence": ("0.45", "--"), "mean_field": ("0.2", ":"), "training-mean field": ("0.2", ":")}
VARIANT_COLOURS = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9")


def _np(x) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def _size(width: float, height: float) -> tuple[float, float]:
    return min(width, MAX_SIZE[0]), min(height, MAX_SIZE[1])


def _limits(*arrays: np.ndarray, zero: bool = False) -> tuple[float, float]:
    """Finite (min, max) over the arrays (NaN/inf of a diverged prediction ignored), widened when flat."""
    vals = np.concatenate([a[np.isfinite(a)].ravel() for a in arrays])
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = (0.0 if zero else float(vals.min())), float(vals.max())
    if hi <= lo:
        lo, hi = lo - 1e-6 - 0.01 * abs(lo), hi + 1e-6 + 0.01 * abs(hi)
    return lo, hi


def _richest_channel(truth: np.ndarray) -> int:
    # With several channels, the one that varies most shows the dynamics best.
    return int(np.argmax([np.nanvar(truth[..., c]) for c in range(truth.shape[-1])]))


def _check(task_name, dim, grid, channels, truth, preds, context):
    truth = _np(truth)
    if dim not in (1, 2, 3) or len(grid) != dim:
        raise ValueError(f"{task_name}: grid {tuple(grid)} does not match dim {dim} (1, 2 or 3 axes)")
    points = math.prod(grid)
    if truth.ndim != 3 or truth.shape[0] < 1:
        raise ValueError(f"{task_name}: truth must be (T >= 1, P, C), got shape {tuple(truth.shape)}")
    if truth.shape[1] != points:
        raise ValueError(f"{task_name}: truth has P={truth.shape[1]} points but grid {tuple(grid)} has {points}")
    if truth.shape[2] != len(channels):
        raise ValueError(f"{task_name}: truth has C={truth.shape[2]} channels but {len(channels)} are named")
    if not preds:
        raise ValueError(f"{task_name}: no variant predictions to plot")
    out = {name: _np(pred) for name, pred in preds.items()}
    for name, pred in out.items():
        if pred.shape != truth.shape:
            raise ValueError(
                f"{task_name}: prediction of variant {name!r} has shape {tuple(pred.shape)}, "
                f"truth has {tuple(truth.shape)}"
            )
    if context is not None:
        context = _np(context)
        context = context[None] if context.ndim == 2 else context
        if context.ndim != 3 or context.shape[1] != points:
            raise ValueError(f"{task_name}: context must be (k, P={points}, C), got shape {tuple(context.shape)}")
    return truth, out, context


def plot_fields(
    task_name: str,
    dim: int,
    grid: tuple[int, ...],
    channels: tuple[str, ...],
    steady: bool,
    truth: torch.Tensor | np.ndarray,
    preds: dict[str, torch.Tensor | np.ndarray],
    path: Path,
    context: torch.Tensor | np.ndarray | None = None,
) -> Path:
    """Truth against each variant's prediction and its |error|, for one trajectory of one task.

    truth and every preds[v]: (T, P, C) physical units over the predicted frames (T >= 1), P the C-order
    flattening of grid. context: (k, P, C') the conditioning frames (steady tasks: the coefficient field).
    """
    truth, preds, context = _check(task_name, dim, tuple(grid), tuple(channels), truth, preds, context)
    names = list(preds)
    note = f" (first {MAX_VARIANTS} of {len(names)} variants)" if len(names) > MAX_VARIANTS else ""
    preds = {n: preds[n] for n in names[:MAX_VARIANTS]}
    if dim == 3:
        nz = grid[2]

        def mid(a):  # the mid-plane along the last axis, flattened back to (T, nx*ny, C)
            return a.reshape(a.shape[0], *grid, a.shape[-1])[:, :, :, nz // 2].reshape(a.shape[0], -1, a.shape[-1])

        truth, preds = mid(truth), {n: mid(p) for n, p in preds.items()}
        context = None if context is None else mid(context)
        grid, note = tuple(grid[:2]), f", mid-plane z={nz // 2} of {nz}{note}"
    draw = _spacetime_1d if dim == 1 else _steady_2d if steady else _snapshots_2d
    fig = draw(task_name, tuple(grid), tuple(channels), truth, preds, context, note)
    fig.savefig(path, dpi=100)
    return Path(path)


def _spacetime_1d(task, grid, channels, truth, preds, context, note):
    T, P, C = truth.shape
    chans = range(min(C, MAX_CHANNELS_1D))
    k = context.shape[0] if context is not None and context.shape[2] == C else 0
    V = len(preds)
    fig = figure(figsize=_size(12.0, 0.8 + 2.2 * V * len(chans)), layout="constrained")
    from matplotlib.ticker import MaxNLocator  # after figure(), which gives the install hint

    axes = fig.subplots(V * len(chans), 3, squeeze=False)
    span = (-0.5, P - 0.5)
    for ci, c in enumerate(chans):
        ref = truth[..., c] if not k else np.concatenate([context[..., c], truth[..., c]])
        vmin, vmax = _limits(ref)
        errs = {n: np.abs(p[..., c] - truth[..., c]) for n, p in preds.items()}
        emax = _limits(*errs.values(), zero=True)[1]
        for vi, (name, pred) in enumerate(preds.items()):
            ax_t, ax_p, ax_e = axes[ci * V + vi]
            kw = dict(origin="lower", aspect="auto", interpolation="nearest")
            ax_t.imshow(ref, extent=(*span, 0.5 - k, T + 0.5), vmin=vmin, vmax=vmax, **kw)
            if k:  # conditioning frames are the rows below the line (steps 1-k .. 0)
                ax_t.axhline(0.5, color="w", ls="--", lw=0.8)
            im = ax_p.imshow(pred[..., c], extent=(*span, 0.5, T + 0.5), vmin=vmin, vmax=vmax, **kw)
            ime = ax_e.imshow(errs[name], extent=(*span, 0.5, T + 0.5), vmin=0, vmax=emax, cmap="magma", **kw)
            for ax, title in (
                (ax_t, f"truth · {channels[c]}"),
                (ax_p, f"{name} · {channels[c]}"),
                (ax_e, f"|error| {name} · {channels[c]}"),
            ):
                ax.set_ylim(0.5 - k, T + 0.5)  # the same steps at the same height in the three panels
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_title(title, fontsize="small")
            ax_t.set_ylabel("rollout step")
            fig.colorbar(im, ax=[ax_t, ax_p])
            fig.colorbar(ime, ax=ax_e)
    for ax in axes[-1]:
        ax.set_xlabel("x (grid index)")
    fig.suptitle(f"{task}: truth | prediction | |error| over {T} steps{note}")
    return fig


def _show(ax, field, grid, title, lims, err=False):
    # (P,) in C order -> (nx, ny); transposed so x runs horizontally and y upwards.
    im = ax.imshow(
        field.reshape(grid).T,
        origin="lower",
        cmap="magma" if err else "viridis",
        vmin=lims[0],
        vmax=lims[1],
        interpolation="nearest",
    )
    ax.set_title(title, fontsize="small")
    ax.set(xticks=[], yticks=[])
    return im


def _snapshots_2d(task, grid, channels, truth, preds, context, note):
    T, P, C = truth.shape
    c = _richest_channel(truth)
    steps = sorted({round(i * (T - 1) / 3) for i in range(4)})
    lead = 1 if context is not None and context.shape[2] == C else 0
    V = len(preds)
    rows, cols = 1 + 2 * V, lead + len(steps)
    fig = figure(figsize=_size(2.3 * cols + 1.2, 2.2 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    lims = _limits(truth[steps, :, c], *([context[-1:, :, c]] if lead else []))
    errs = {n: np.abs(p[steps, :, c] - truth[steps, :, c]) for n, p in preds.items()}
    elims = _limits(*errs.values(), zero=True)
    if lead:
        _show(axes[0, 0], context[-1, :, c], grid, "context (last frame)", lims)
        for ax in axes[1:, 0]:
            ax.set_axis_off()
    for j, s in enumerate(steps):
        im = _show(axes[0, lead + j], truth[s, :, c], grid, f"truth · step {s + 1}", lims)
        for vi, (name, pred) in enumerate(preds.items()):
            _show(axes[1 + 2 * vi, lead + j], pred[s, :, c], grid, f"{name} · step {s + 1}", lims)
            ime = _show(
                axes[2 + 2 * vi, lead + j], errs[name][j], grid, f"|error| {name} · step {s + 1}", elims, err=True
            )
    for r in range(rows):  # a colour bar per row (scales shared), so none has to be matched to its row
        fig.colorbar(im if r == 0 or r % 2 else ime, ax=axes[r, :].tolist())
    fig.suptitle(f"{task}: channel '{channels[c]}', steps {', '.join(str(s + 1) for s in steps)} of {T}{note}")
    return fig


def _steady_2d(task, grid, channels, truth, preds, context, note):
    c = _richest_channel(truth)
    V = len(preds)
    fig = figure(figsize=_size(2.3 * (2 + V) + 1.6, 5.2), layout="constrained")
    axes = fig.subplots(2, 2 + V, squeeze=False)
    for ax in axes[1, :2]:
        ax.set_axis_off()
    if context is not None:  # the coefficient on its own scale (first context channel)
        coef = context[-1, :, 0]
        fig.colorbar(_show(axes[0, 0], coef, grid, "coefficient", _limits(coef)), ax=axes[0, 0])
    else:
        axes[0, 0].set_axis_off()
    field = truth[-1, :, c]
    errs = {n: np.abs(p[-1, :, c] - field) for n, p in preds.items()}
    elims = _limits(*errs.values(), zero=True)
    im = _show(axes[0, 1], field, grid, f"truth · {channels[c]}", lims := _limits(field))
    for vi, (name, pred) in enumerate(preds.items()):
        _show(axes[0, 2 + vi], pred[-1, :, c], grid, f"{name} · {channels[c]}", lims)
        ime = _show(axes[1, 2 + vi], errs[name], grid, f"|error| {name}", elims, err=True)
    fig.colorbar(im, ax=axes[0, 1:].tolist())
    fig.colorbar(ime, ax=axes[1, 2:].tolist())
    fig.suptitle(f"{task} (steady): channel '{channels[c]}'{note}")
    return fig


def plot_error_vs_step_variants(
    curves: dict[str, dict[str, list[float]]], path: Path, title: str = "nRMSE against rollout step"
) -> Path | None:
    """nRMSE per rollout step, a panel per task and a line per variant (curves[variant][task]).

    The trivial predictors (persistence, mean_field) are grey and dashed/dotted. None (nothing drawn)
    when no task has more than one step.
    """
    tasks: list[str] = []
    for per_task in curves.values():
        tasks += [t for t, curve in per_task.items() if len(curve or []) > 1 and t not in tasks]
    if not tasks:
        return None
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    # at least 8 inches wide: the legend of long variant names goes under the panels
    fig = figure(figsize=_size(max(8.0, 3.6 * cols), 2.9 * rows + 0.3 * len(curves) + 0.4), layout="constrained")
    from matplotlib.ticker import MaxNLocator  # after figure(), which gives the install hint

    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    learned = [v for v in curves if v not in BASELINE_STYLE]  # one colour per variant in every panel
    styles = {v: (VARIANT_COLOURS[i % len(VARIANT_COLOURS)], "-") for i, v in enumerate(learned)}
    styles.update(BASELINE_STYLE)
    for ax, task in zip(axes, tasks):
        for variant, per_task in curves.items():
            curve = per_task.get(task)
            if curve:
                colour, ls = styles[variant]
                ax.plot(range(1, len(curve) + 1), curve, color=colour, ls=ls, label=variant)
        ax.set(title=task, xlabel="rollout step", ylabel="nRMSE", yscale="log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    for ax in axes[len(tasks) :]:
        ax.set_visible(False)
    handles = {}  # every variant in the legend, even one missing from the first task
    for ax in axes[: len(tasks)]:
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(handles.values(), handles.keys(), fontsize="small", loc="outside lower center", ncols=2)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return Path(path)
