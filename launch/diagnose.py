"""Diagnose the latent model against its reference on one task group: floors, negative transfer, steps curve.

    python launch/diagnose.py --task pdebench2 --budget-s 90 --model tiny --reference fno --out diagnose/pdebench2

1. trains ``--model`` on every task of ``--task`` at once for the budget (``optim.schedule=cosine_time``,
   ``trainer.log_every=1`` so the steps each task drew can be counted) into ``<out>/multitask/``;
2. trains the same model on each task alone for the steps that task got in (1) (``trainer.max_steps``,
   the step-based cosine schedule) into ``<out>/single/<task>/``: the difference is the negative transfer;
3. trains ``--reference`` on the task group for the same budget into ``<out>/reference/``;
4. runs ``python -m ups.diagnose`` on every run (the same split, normalised units) and writes
   ``<out>/diagnosis.md`` (one table per task: multi-task against single-task against the reference,
   and the floors of the multi-task model) and ``<out>/val_nrmse_vs_step.png`` (validation nRMSE
   against the training step of (1) and (3), from their metrics.jsonl).

Like everything in launch/, this only builds command lines; ups/ does the work. Finished runs are reused.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # launch/ is a folder of scripts, not a package
from _runs import Job, fmt, machine, run_jobs, train_cmd  # noqa: E402

from ups.records import read_records  # noqa: E402


def steps_per_task(run_dir: Path) -> dict[str, int]:
    """Optimizer steps in which each task was drawn, from a run logged every step (``loss/<task>`` present)."""
    steps: dict[str, set[int]] = {}
    for r in read_records(run_dir):
        if r.get("kind") == "train":
            for key in r:
                if key.startswith("loss/"):
                    steps.setdefault(key[5:], set()).add(r["step"])
    return {task: len(s) for task, s in sorted(steps.items())}


def _own(extra: list[str], task: str, tasks: list[str]) -> list[str]:
    """The overrides that apply to a single-task run of ``task`` (not those of the other tasks' datasets)."""
    others = [f"task.datasets.{t}." for t in tasks if t != task]
    return [e for e in extra if not any(e.lstrip("+").startswith(o) for o in others)]


def diagnose_job(name: str, run_dir: Path, args: argparse.Namespace) -> Job:
    """``python -m ups.diagnose`` on one run; finished once its eval/diagnosis.json exists."""
    cmd = [
        sys.executable,
        "-m",
        "ups.diagnose",
        f"run={run_dir}",
        f"split={args.split}",
        f"invert_steps={args.invert_steps}",
        f"eval_samples={args.eval_samples}",
    ]
    return Job(f"diagnose {name}", run_dir, cmd, done=run_dir / "eval" / "diagnosis.json")


def report(
    runs: dict[str, Path], singles: dict[str, Path], steps: dict[str, int], args: argparse.Namespace, extra: list[str]
) -> str:
    """The markdown: per task, the multi-task model against itself alone and against the reference, and its floors."""
    diag = {name: json.loads((d / "eval" / "diagnosis.json").read_text())["results"] for name, d in runs.items()}
    alone = {t: json.loads((d / "eval" / "diagnosis.json").read_text())["results"][t] for t, d in singles.items()}
    multi, ref = diag["multitask"], diag["reference"]
    cmd = (
        f"python launch/diagnose.py --task {args.task} --budget-s {args.budget_s:g} --model {args.model} "
        f"--reference {args.reference} --split {args.split}" + (f" -- {' '.join(extra)}" if extra else "")
    )
    lines = [
        f"Command: `{cmd}`",
        f"Date: {dt.date.today().isoformat()}; machine: {machine()}, hardware.threads={args.threads}.",
        "",
        f"nRMSE on the {args.split} split in **normalised units** (python -m ups.diagnose; "
        f"{args.eval_samples} trajectories per task). Multi-task: {args.model} on all tasks for {args.budget_s:g} s "
        "(cosine over the budget); single-task: the same model on that task alone for the steps the task got in "
        f"the multi-task run (step-based cosine); reference: {args.reference} on all tasks for the same budget. "
        "Negative transfer = multi-task / single-task rollout nRMSE (> 1: the other tasks hurt).",
        "",
        "| task | steps | rollout multi | rollout single | transfer | rollout "
        + args.reference
        + " | one step multi | one step single | one step "
        + args.reference
        + " | true next latent | decoder floor | reconstruction |",
        "|---|" + "---|" * 11,
    ]
    for t in [t for t in multi if t != "mean"]:
        m, s, r = multi[t], alone.get(t, {}), ref.get(t, {})
        ratio = m["rollout"] / s["rollout"] if s.get("rollout") else float("nan")
        cells = [
            steps.get(t),
            m["rollout"],
            s.get("rollout"),
            ratio,
            r.get("rollout"),
            m["one_step"],
            s.get("one_step"),
            r.get("one_step"),
            m.get("true_next_latent"),
            m.get("decoder_floor"),
            m.get("reconstruction"),
        ]
        lines.append(f"| {t} | " + " | ".join(str(c) if isinstance(c, int) else fmt(c) for c in cells) + " |")
    lines += [
        "",
        "Floors (the multi-task model; see its eval/diagnosis.md): true next latent = decode(encode(true next "
        "context)); decoder floor = the best latent found by inverting the decoder from the operator's latent; "
        "reconstruction = decode(encode(context)) against the last context frame. A floor close to the one-step "
        "error says the autoencoder, not the operator, limits the model.",
        "",
        "![validation nRMSE against step](val_nrmse_vs_step.png)",
    ]
    return "\n".join(lines) + "\n"


def plot_curves(runs: dict[str, Path], path: Path) -> Path | None:
    """Validation nRMSE (physical units, as the runs log it) against the training step, one panel per task."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return None
    curves = {
        name: [r for r in read_records(d) if r.get("kind") == "eval" and r.get("split") == "val"]
        for name, d in runs.items()
    }
    tasks = sorted({k.split("/")[1] for rs in curves.values() for r in rs for k in r if k.startswith("nrmse/")})
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, rs in curves.items():
            pts = [(r["step"], r[f"nrmse/{task}"]) for r in rs if f"nrmse/{task}" in r]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=name)
        ax.set(title=task, xlabel="training step", yscale="log")
    axes[0][0].set_ylabel("validation nRMSE (rollout)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="pdebench2", help="a task group option (default pdebench2)")
    p.add_argument("--model", default="tiny", help="the latent model option (default tiny)")
    p.add_argument("--reference", default="fno", help="the reference model option (default fno)")
    p.add_argument(
        "--budget-s", type=float, default=90.0, help="training wall-clock of the multi-task and reference runs (s)"
    )
    p.add_argument("--seed", type=int, default=0, help="trainer.seed of every run")
    p.add_argument("--split", default="val", choices=("val", "test"), help="the split the diagnosis scores")
    p.add_argument("--eval-samples", type=int, default=8, help="trajectories per task the diagnosis scores")
    p.add_argument("--invert-steps", type=int, default=50, help="Adam steps of the decoder floor's inversion")
    p.add_argument("--parallel", type=int, default=1, help="trainings at once, each with --threads threads (default 1)")
    p.add_argument("--out", type=Path, default=None, help="where the runs and the report go (default diagnose/<task>)")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="shared data directory (data.generate=true)")
    p.add_argument("--hardware", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--force", action="store_true", help="retrain and rediagnose runs that already finished")
    args, extra = p.parse_known_args(argv)
    extra = [e for e in extra if e != "--"]
    out = args.out or Path("diagnose") / args.task

    def common(task, d, *o):
        return train_cmd(task, d, args.data_dir, args.hardware, args.threads, [f"trainer.seed={args.seed}", *o])

    timed = [f"trainer.time_budget_s={args.budget_s}", "trainer.max_steps=1000000", "optim.schedule=cosine_time"]
    runs = {"multitask": out / "multitask", "reference": out / "reference"}
    no_log_every = [e for e in extra if not e.startswith("trainer.log_every=")]
    run_jobs(
        [
            Job(
                "multi-task",
                runs["multitask"],
                common(
                    args.task, runs["multitask"], f"model={args.model}", *timed, *no_log_every, "trainer.log_every=1"
                ),
            ),
            Job(
                "reference",
                runs["reference"],
                common(args.task, runs["reference"], f"model={args.reference}", *timed, *extra),
            ),
        ],
        args.parallel,
        args.threads,
        args.force,
    )
    steps = steps_per_task(runs["multitask"])
    singles = {t: out / "single" / t for t in steps}
    run_jobs(
        [
            Job(
                f"single {t}",
                d,
                common(
                    t,
                    d,
                    f"model={args.model}",
                    f"trainer.max_steps={steps[t]}",
                    "optim.schedule=cosine",
                    *_own(extra, t, list(steps)),
                ),
            )
            for t, d in singles.items()
        ],
        args.parallel,
        args.threads,
        args.force,
    )
    diagnosed = {**runs, **{f"single/{t}": d for t, d in singles.items()}}
    run_jobs([diagnose_job(n, d, args) for n, d in diagnosed.items()], 1, args.threads, args.force)
    text = report(runs, singles, steps, args, extra)
    (out / "diagnosis.md").write_text(text)
    plot_curves({args.model: runs["multitask"], args.reference: runs["reference"]}, out / "val_nrmse_vs_step.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
