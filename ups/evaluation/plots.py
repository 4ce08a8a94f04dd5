"""Figures shared by the run report and the evaluation tables, drawn without pyplot (Agg canvas)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ups.data.tasks import TaskData


def figure(**kw):
    """A matplotlib Figure on the non-interactive Agg canvas (no pyplot, no global state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError('the run report needs matplotlib: pip install "ups[plot]"') from err
    return FigureCanvasAgg(Figure(**kw)).figure


def plot_error_vs_step(results: dict[str, dict], tasks: Sequence[TaskData], path: Path) -> Path | None:
    """nRMSE against the rollout step per time-dependent task: the model, and the trivial predictors dashed.

    None (nothing drawn) when no task has more than one predicted step (steady tasks only).
    """
    shown = [t for t in tasks if len(results["model"].get(f"nrmse_t/{t.name}") or []) > 1]
    if not shown:
        return None
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    fig = figure(figsize=(3.6 * cols, 2.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    styles = {"model": ("C0", "-"), "persistence": ("C3", "--"), "mean_field": ("0.4", ":")}
    for ax, task in zip(axes, shown):
        for name, (colour, ls) in styles.items():
            curve = results.get(name, {}).get(f"nrmse_t/{task.name}")
            if curve:
                ax.plot(range(1, len(curve) + 1), curve, color=colour, ls=ls, label=name.replace("_", " "))
        ax.set(title=task.name, xlabel="rollout step", ylabel="nRMSE", yscale="log")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return path
