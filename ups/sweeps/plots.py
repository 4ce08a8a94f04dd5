"""The sweep report's figures (matplotlib on the Agg canvas, no pyplot), from its rows."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ups.evaluation.plots import figure


def _done(rows: list[dict], key: str) -> list[dict]:
    return [r for r in rows if r.get(key) is not None and r.get("samples_per_s") is not None]


def plot_throughput(rows: list[dict], path: Path) -> Path | None:
    """samples/s against the per-device batch, one line per (world size, accumulation)."""
    groups = defaultdict(list)
    for r in _done(rows, "batch_size"):
        groups[(r["world_size"], r["accum_steps"])].append((r["batch_size"], r["samples_per_s"]))
    if not groups:
        return None
    fig = figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for (world, accum), pts in sorted(groups.items()):
        pts.sort()
        ax.plot(*zip(*pts), marker="o", label=f"{world} rank{'s' * (world > 1)}, accumulation {accum}")
    batches = sorted({b for pts in groups.values() for b, _ in pts})
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.set(xlabel="per-device batch", ylabel="samples/s", title="Throughput against per-device batch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return path


def plot_scaling(rows: list[dict], path: Path) -> Path | None:
    """Scaling efficiency, samples/s at N ranks / (N x samples/s at 1 rank), per per-device batch
    (samples/s averaged over the jobs of that batch and rank count, e.g. several accumulations),
    against the rank count, with the ideal line; None without a 1-rank reference."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    for r in _done(rows, "world_size"):
        groups[r["batch_size"]][r["world_size"]].append(r["samples_per_s"])
    curves = {b: {w: sum(v) / len(v) for w, v in by.items()} for b, by in groups.items() if 1 in by and len(by) > 1}
    if not curves:
        return None
    fig = figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    worlds = sorted({w for v in curves.values() for w in v})
    ax.plot(worlds, [1.0] * len(worlds), "k--", label="ideal (linear scaling)")
    for batch, by_world in sorted(curves.items()):
        ws = sorted(by_world)
        ax.plot(ws, [by_world[w] / (w * by_world[1]) for w in ws], marker="o", label=f"per-device batch {batch}")
    ax.set(
        xlabel="ranks (GPUs, or CPU processes)",
        ylabel="scaling efficiency",
        xticks=worlds,
        title="samples/s at N ranks / (N x samples/s at 1 rank)",
    )
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return path


def job_labels(rows: list[dict]) -> list[str]:
    """Short labels: the job number and the overrides that differ between jobs (``batch_size=8``)."""
    parts = [r.get("overrides", "").split() for r in rows]
    common = set.intersection(*(set(p) for p in parts)) if parts else set()
    labels = []
    for r, p in zip(rows, parts):
        varying = [o.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + o.split("=", 1)[-1] for o in p if o not in common]
        state = "" if r["status"] == "completed" else f" ({r['status']})"
        labels.append(f"{r['job']}: {' '.join(varying)}{state}")
    return labels


def plot_per_job(rows: list[dict], prefix: str, ylabel: str, title: str, path: Path) -> Path | None:
    """A bar per job for every column starting with ``prefix`` (e.g. one bar per task), jobs labelled."""
    keys = sorted({k for r in rows for k in r if k.startswith(prefix) and not k.endswith("/mean")})
    if not keys or not any(r.get(k) is not None for r in rows for k in keys):
        return None
    fig = figure(figsize=(max(8.0, 0.9 * len(rows) * max(1, len(keys)) + 2), 4.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        xs = [j + i * width for j in range(len(rows))]
        ax.bar(xs, [r.get(key) or 0.0 for r in rows], width, label=key[len(prefix) :] or key)
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(rows))], job_labels(rows), rotation=30, ha="right", fontsize="small"
    )
    ax.set(xlabel="job", ylabel=ylabel, title=title)
    ax.grid(True, axis="y", alpha=0.3)
    if len(keys) > 1:
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return path


def plot_sweep(rows: list[dict], out: Path) -> list[Path]:
    """Every figure the rows allow, written into ``out``; returns their paths."""
    drawn = [
        plot_throughput(rows, out / "sweep_throughput.png"),
        plot_scaling(rows, out / "sweep_scaling.png"),
        plot_per_job(
            rows, "val/nrmse/", "validation nRMSE", "Final validation nRMSE per task", out / "sweep_val_nrmse.png"
        ),
        plot_per_job(rows, "peak_memory_mb", "MB", "Peak memory (rank 0)", out / "sweep_memory.png"),
    ]
    return [p for p in drawn if p is not None]
