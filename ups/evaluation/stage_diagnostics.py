"""Why a correction helps or not: one-step errors of a staged run's corrections, with their bounds.

    python -m ups.evaluation.stage_diagnostics <run_dir> [--split val|test] [--windows 128] [-k 8]

On evenly spaced windows of each time-dependent task, one step ahead, RMSE in normalised units of:
the operator; the operator's latent plus the *true* residual the diffusion stage models (its
ceiling: how well the decoder reads the true next latent); each corrector's single sample, the mean
of ``k`` samples (an estimate of the conditional mean), and the best of the ``k`` samples and the
uncorrected prediction chosen by the truth (the ceiling of any selector) and by the physics reward
(TTC's choice). Printed as
a markdown table; nothing is written into the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ups.build import trained
from ups.data.datasets import MultiTaskDataset, WindowDataset
from ups.evaluation.loading import load_run
from ups.evaluation.ttc import TestTimeCorrection
from ups.objectives import latent_heads as programs
from ups.objectives.next_step import change_base


def rmse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample RMSE over points and channels, (..., B)."""
    return (pred.float() - y.float()).pow(2).mean((-2, -1)).sqrt()


@torch.no_grad()
def diagnose(run_dir: str | Path, split: str = "val", windows: int = 128, k: int = 8) -> str:
    """The markdown table of one-step errors for every time-dependent task of the run."""
    loaded = load_run(run_dir, "final", device=torch.device("cpu"))
    model, tasks = loaded.model, loaded.tasks
    correctors = [o for o in trained(loaded.cfg.stages, loaded.objectives).values() if o.table_role == "corrector"]
    lines = [
        f"One step ahead, RMSE (normalised units), mean over {windows} {split} windows per task; k = {k}.",
        "",
        "| task | what | RMSE |",
        "|---|---|---|",
    ]
    for task in (t for t in tasks if not t.family.steady):
        w = WindowDataset(task, split)
        items = [{"task_index": 0, **w[i]} for i in range(0, len(w), max(1, len(w) // windows))][:windows]
        b = {**MultiTaskDataset([w]).collate(items)[0], "t": 0}
        y, rows = b["y"], []
        # a model that predicts the change decodes it: add the last frame, as every predict does
        base = change_base(model, b["x"], y.shape[-1])
        z_pred = programs.call(model, b, programs.operator_latents)
        rows.append(("operator", rmse(model.decode(task.name, z_pred, b["coords"]) + base, y)))
        true_next = model.encode(task.name, programs.next_context(b["x"], y), b["coords"])
        rows.append(
            (
                "operator + true encoder residual (ceiling of the default target)",
                rmse(model.decode(task.name, true_next, b["coords"]) + base, y),
            )
        )
        for c in correctors:
            cands = c.candidates(model, b, k)  # the uncorrected prediction first, then k corrected
            errors = rmse(cands, y)  # (1 + k, B)
            ttc = TestTimeCorrection(c, model, [task], k)
            rows += [
                (f"+ {c.label}, one sample", errors[1]),
                (f"+ {c.label}, mean of {k}", rmse(cands[1:].mean(0), y)),
                (f"+ {c.label}, best of {k} + uncorrected by the truth (ceiling of TTC)", errors.min(0).values),
                (f"+ {c.label}, best of {k} + uncorrected by the physics reward (TTC)", rmse(ttc.choose(b)[0], y)),
            ]
        lines += [f"| {task.name} | {what} | {float(e.mean()):.4g} |" for what, e in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("-k", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        print(diagnose(args.run_dir, args.split, args.windows, args.k))
    except FileNotFoundError as err:
        print(f"Cannot diagnose {args.run_dir}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from ups.errors import exit_on_error

    with exit_on_error():
        sys.exit(main())
