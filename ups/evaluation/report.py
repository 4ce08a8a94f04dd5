"""A run's figures: training curves, and rollouts against the truth, written as PNGs into the run.

``python -m ups.evaluation.report <run_dir> [--out DIR] [--samples N] [--split val|test]`` writes ``curves.png``
from ``metrics.jsonl`` alone and ``rollouts.png`` by rebuilding the run's data and model from ``config.yaml`` and
its final checkpoint; when the data or checkpoint are gone, curves.png is still written and the log says why.
matplotlib is optional (``ups[plot]``), drawn on the Agg canvas without pyplot: no backend is ever switched.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ups.data.datasets import TrajectoryDataset, task_keys
from ups.data.readers import DataFileError
from ups.evaluation.evaluate import rollout
from ups.evaluation.loading import load_run
from ups.evaluation.metrics import nrmse
from ups.evaluation.plots import figure
from ups.records import read_records

log = logging.getLogger(__name__)
SPLITS = ("val", "test")


def timeline(records: list[dict]) -> dict:
    """Train and validation records on the global step axis, plus restarts, stage starts and the test record.

    ``step`` counts over all stages. A resumed run logs again the steps after its checkpoint: a
    train step that does not increase marks a restart, and for a repeated step the last record wins.
    """
    starts, train, val, restarts, test, last = {}, {}, {}, [], None, -1
    for r in records:
        step = r.get("step", 0)
        if r.get("kind") == "eval" and r.get("split") == "test":
            test = r  # the closing record, logged again by a re-run: the last one counts
            continue
        if r.get("kind") not in ("train", "eval"):
            continue
        starts.setdefault(r.get("stage"), step - r.get("stage_step", step))
        if r["kind"] == "train":
            if step <= last:
                restarts.append(step)
            last = step
            train[step] = r
        elif r.get("split") == "val":
            val[step] = r
    return {
        "train": dict(sorted(train.items())),
        "val": dict(sorted(val.items())),
        "test": test,
        "restarts": restarts,
        "stages": starts,
    }


def _series(by_step: dict[int, dict], key: str) -> tuple[list, list]:
    """(steps, values) of ``key`` where it is logged, positive and finite: log axes show nothing else."""
    keep = [
        (x, r[key])
        for x, r in by_step.items()
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and r[key] > 0
    ]
    return [x for x, _ in keep], [y for _, y in keep]


def plot_curves(records: list[dict], path: Path) -> Path:
    """Training loss (total and per task) and validation nRMSE per task against the step."""
    fig = figure(figsize=(13, 5.2), layout="constrained")  # first: it raises the install hint
    from matplotlib import colormaps  # tab20 when the 10-colour cycle would repeat a colour

    tl = timeline(records)
    tasks = sorted(
        {k.split("/")[1] for r in records for k in r if k.startswith(("loss/", "nrmse/")) and k.count("/") == 1}
        - {"mean"}
    )
    colour = {t: f"C{i}" if len(tasks) <= 10 else colormaps["tab20"](i % 20) for i, t in enumerate(tasks)}
    ax_loss, ax_val = fig.subplots(1, 2)
    ax_loss.plot(*_series(tl["train"], "loss"), color="0.15", lw=1, alpha=0.7, label="loss (all tasks)")
    for t in tasks:
        # A task's loss exists only on the steps that drew it: markers, and a rolling mean when dense.
        px, py = _series(tl["train"], f"loss/{t}")
        if px:
            ax_loss.plot(px, py, "o", ms=3, alpha=0.45, color=colour[t], label=f"loss/{t}")
        if len(py) >= 20:
            w = max(5, len(py) // 20)
            smooth = np.exp(np.convolve(np.log(py), np.ones(w) / w, "valid"))  # geometric: log axis
            ax_loss.plot(px[w - 1 :], smooth, color=colour[t], lw=1.5)
    ax_loss.set(
        yscale="log",
        xlabel="optimizer step",
        ylabel="MSE (normalised units)",
        title="Training loss" if tl["train"] else "Training loss (no train records)",
    )
    test = tl["test"] or {}
    for t in tasks:
        vx, vy = _series(tl["val"], f"nrmse/{t}")
        label = t + (f" (test {test[f'nrmse/{t}']:.3g})" if f"nrmse/{t}" in test else "")
        if vx:
            ax_val.plot(vx, vy, "o-", ms=4, color=colour[t], label=label)
    vx, vy = _series(tl["val"], "nrmse/mean")
    if vx:
        mean = f" (test {test['nrmse/mean']:.3g})" if "nrmse/mean" in test else ""
        ax_val.plot(vx, vy, "k--", lw=1.5, label="mean" + mean)
        ax_val.set_yscale("log")
    else:
        ax_val.text(
            0.5,
            0.5,
            "no validation (eval) records in metrics.jsonl",
            ha="center",
            va="center",
            transform=ax_val.transAxes,
            color="0.4",
        )
        ax_val.tick_params(labelleft=False, labelbottom=False)  # an empty panel's 0..1 would mislead
    title = "Validation nRMSE per task" + (
        f"\nfinal test nRMSE (mean over tasks): {test['nrmse/mean']:.4g}" if "nrmse/mean" in test else ""
    )
    ax_val.set(xlabel="optimizer step", ylabel="nRMSE", title=title)
    for ax in (ax_loss, ax_val):
        for i, x in enumerate(tl["restarts"]):
            ax.axvline(x, color="C3", ls=":", lw=1.2, label="restart (resumed)" if i == 0 else None)
        for name, x in tl["stages"].items() if len(tl["stages"]) > 1 else ():  # stage starts, named
            ax.axvline(x, color="0.5", ls="--", lw=0.8)
            ax.text(
                x,
                0.99,
                f" {name}",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1},
            )  # clear of the title
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=3, frameon=False)
        ax.grid(True, which="major", alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)  # steps: no 2.5
    fig.savefig(path, dpi=110)
    return path


def _draw_1d(sf, task, truth, pred, frames):
    """Lines over x of the first channel: truth and prediction above, |error| below, a column per frame."""
    x, chan = task.files[0].coords()[..., 0], task.family.channels[0]
    axes = sf.subplots(2, len(frames), sharex=True, squeeze=False, gridspec_kw={"height_ratios": [2, 1]})
    for col, (i, what, title) in enumerate(frames):
        top, bottom = axes[0, col], axes[1, col]
        top.plot(x, truth[i, :, 0], "k-", lw=1.5, label="truth")
        top.plot(x, pred[i, :, 0], "C1--", lw=1.5, label="prediction")
        bottom.plot(x, np.abs(pred[i, :, 0] - truth[i, :, 0]), "C3-", lw=1.2)
        top.set_title(f"{title} ({what})", fontsize=9)
        bottom.set_xlabel("x")
        top.grid(alpha=0.3), bottom.grid(alpha=0.3)
    axes[0, 0].set_ylabel(chan), axes[1, 0].set_ylabel(f"|error| {chan}")
    sf.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")


def _draw_nd(sf, task, truth, pred, frames):
    """Images of the first channel: rows truth/prediction/|error|, a column per frame (a row if one)."""
    space, dim, (lo, hi), chan = task.files[0].space, task.family.dim, task.family.domain, task.family.channels[0]

    def img(a):  # (P,) -> an image with y up; 3D: the middle z slice
        g = a.reshape(space)
        return (g[:, :, space[2] // 2] if dim == 3 else g).T

    shown = [(img(truth[i, :, 0]), img(pred[i, :, 0])) for i, _, _ in frames]
    vmin, vmax = min(t.min() for t, _ in shown), max(t.max() for t, _ in shown)  # the truth's range
    emax = max(float(np.abs(p - t).max()) for t, p in shown) or 1.0
    one = len(frames) == 1  # a steady task: truth, prediction, error side by side
    axes = sf.subplots(1, 3, squeeze=False).T if one else sf.subplots(3, len(frames), squeeze=False)
    kw = {"origin": "lower", "extent": (lo, hi, lo, hi)}
    for col, ((t, p), (_, what, title)) in enumerate(zip(shown, frames)):
        im = axes[0, col].imshow(t, cmap="viridis", vmin=vmin, vmax=vmax, **kw)
        axes[1, col].imshow(p, cmap="viridis", vmin=vmin, vmax=vmax, **kw)
        ie = axes[2, col].imshow(np.abs(p - t), cmap="magma", vmin=0, vmax=emax, **kw)
        for row, name in enumerate(("truth", "prediction", "|error|")):
            ax = axes[row, col]
            ax.set_title(f"{name}: {title}" if one else f"{title} ({what})" if row == 0 else "", fontsize=9)
            ax.set_xlabel("x" if one or row == 2 else "")
            ax.set_ylabel("y" if one else "" if col else f"{name}\ny")
            ax.tick_params(labelbottom=one or row == 2, labelleft=one or col == 0)
    clipped = any(p.min() < vmin or p.max() > vmax for _, p in shown)  # colours span the truth only
    sf.colorbar(im, ax=axes[:2].ravel().tolist(), shrink=0.8, label=chan, extend="both" if clipped else "neither")
    sf.colorbar(ie, ax=axes[2].ravel().tolist(), shrink=0.8, label=f"|error| {chan}")


def plot_rollouts(run_dir: Path, path: Path, samples: int = 1, split: str = "val", data_dir: str | None = None) -> Path:
    """Truth, prediction and |error| of the run's model on ``samples`` trajectories of each task."""
    loaded = load_run(run_dir, "final", data_dir)
    cfg, tasks, device = loaded.cfg, loaded.tasks, next(loaded.model.parameters()).device
    rows = []
    for task in tasks:
        ds = TrajectoryDataset(task, split, max_samples=samples, preload_max_gb=cfg.data.preload_max_gb)
        items = [ds[j] for j in range(len(ds))]
        traj, cond = (torch.stack([it[key] for it in items]).to(device) for key in ("traj", "cond"))
        with loaded.autocast():  # as the run computed
            pred = rollout(loaded.predict, {**task_keys(task, device), "cond": cond}, traj, task.initial_step).float()
        _, _, mean, std = (torch.as_tensor(a, device=device) for a in task.stats.arrays())
        pred, truth = pred * std + mean, traj[:, task.initial_step :] * std + mean  # physical units
        scores = nrmse(pred, truth).tolist()
        for j in range(len(items)):
            log.info("%s: %s trajectory %d: nRMSE %.6g", task.name, split, j, scores[j])
            rows.append((task, j, scores[j], truth[j].cpu().numpy(), pred[j].cpu().numpy()))
    heights = [3.4 if t.family.dim == 1 else 4.0 if t.family.steady else 8.4 for t, *_ in rows]
    fig = figure(figsize=(11, sum(heights)), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(len(rows), 1, height_ratios=heights))
    for sf, (task, j, score, truth, pred) in zip(subfigs, rows):
        k, chan, n = task.initial_step, task.family.channels[0], truth.shape[0]
        dt = task.files[task.splits[split][j][0]].dt()
        frames = (
            [(0, "", "solution from the coefficient")]
            if task.family.steady
            else [
                (i, what, f"frame {k + i}" + (f", t = {(k + i) * dt:.3g}" if dt else ""))
                for i, what in sorted({0: "first predicted", (n - 1) // 2: "middle", n - 1: "last"}.items())
            ]
        )
        where = ", middle z slice" if task.family.dim == 3 else ""
        sf.suptitle(
            f"{task.name} ({task.family.dim}D), {split} trajectory {j}: nRMSE {score:.3g} "
            f"(all channels); showing channel '{chan}'{where}",
            fontsize=11,
            fontweight="bold",
        )
        (_draw_1d if task.family.dim == 1 else _draw_nd)(sf, task, truth, pred, frames)
    fig.savefig(path, dpi=min(100, int(30000 / sum(heights))))  # stays under the PNG size limit
    return path


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    samples: int = 1,
    split: str = "val",
    data_dir: str | Path | None = None,
) -> list[Path]:
    """Write ``curves.png`` and ``rollouts.png`` into ``out`` (default ``<run_dir>/report``).

    Returns the paths written; a figure that cannot be drawn is logged with the reason and left out.
    """
    if split not in SPLITS or samples < 1:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} and samples >= 1; got {split!r}, {samples}")
    figure()  # fail early, with the install hint, when matplotlib is absent
    run_dir, out = Path(run_dir), Path(out) if out is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if (run_dir / "metrics.jsonl").exists():
        written.append(plot_curves(read_records(run_dir), out / "curves.png"))
    else:
        log.warning("curves.png not written: no metrics.jsonl in %s", run_dir)
    try:
        written.append(plot_rollouts(run_dir, out / "rollouts.png", samples, split, data_dir))
    except (FileNotFoundError, DataFileError) as err:  # data moved, no checkpoint: say so, keep curves
        log.warning("rollouts.png not written: %s", err)
    return written


def main(argv: list[str] | None = None) -> int:
    """The command line: write the report, print the paths written; exit status 1 if none was."""
    p = argparse.ArgumentParser(prog="python -m ups.evaluation.report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a run directory (holds metrics.jsonl, config.yaml, checkpoints/)")
    p.add_argument("--out", type=Path, help="where to write the PNGs (default: <run_dir>/report)")
    p.add_argument("--samples", type=int, default=1, help="trajectories per task in rollouts.png (default 1)")
    p.add_argument("--split", choices=SPLITS, default="val", help="split the trajectories come from")
    p.add_argument("--data-dir", help="where the run's data files are now, if not at its paths.data_dir")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = write_report(args.run_dir, args.out, args.samples, args.split, args.data_dir)
    print(*paths, sep="\n")
    return 0 if paths else 1


if __name__ == "__main__":
    from ups.errors import exit_on_error

    with exit_on_error():
        sys.exit(main())
