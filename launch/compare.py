"""Train several models on the same tasks for the same wall-clock budget, over several seeds, and write one comparison table.

    python launch/compare.py --task pdebench2 --budget-s 120 --out compare/pdebench2
    python launch/compare.py --task pdebench11 --budget-s 240 --models tiny fno unet --lr-grid 3e-4 1e-3 3e-3
    python launch/compare.py --task burgers1d --group stage --options operator operator_unrolled --seeds 0

Each model and seed is one ``python -m ups.train`` run into ``<out>/<option>/seed<k>/`` (``model=<option>``,
or ``<group>=<option>`` to compare the options of another group, e.g. stages; ``trainer.seed=<k>``;
``trainer.time_budget_s``; ``optim.schedule=cosine_time``: warm-up, then a cosine over elapsed
training time that reaches its floor when the budget is spent, so no model is cut off at a high
learning rate). The runs share the data directory, so they see the same files and splits.

``--lr-grid`` first trains each model once per learning rate (the first seed, the same budget and
task, into ``<out>/<option>/grid/lr<lr>/``) and keeps, per model, the rate with the lowest
*validation* mean rollout nRMSE; the seeds then run with it. The test split is never looked at to choose.

The table (``<out>/comparison.md`` and ``.json``) takes each run's ``eval/final_test.json``: test
rollout and one-step nRMSE per task as mean ± sample standard deviation over the seeds, beside
persistence and the training-mean field; per model its parameters, steps, samples/s and
wall-clock; when the runs finished; whether the rates were fixed with ``--lr``; and on how many
families each model is ahead of ``--reference`` and of both trivial predictors. Like everything in
launch/, this only builds command lines; ups/ does the work.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # launch/ is a folder of scripts, not a package
from _runs import (
    Job,
    final_test,
    fmt,
    last_val,
    machine,
    mean_samples_per_s,
    mean_std,
    run_jobs,  # noqa: E402
    run_lr,
    tasks_of,
    train_cmd,
)


def job(option: str, seed: int, run_dir: Path, args: argparse.Namespace, extra: list[str], lr: float | None) -> Job:
    """One training of ``option`` at the budget with the time-based schedule (``extra``: every run's
    overrides; ``--set``'s of this option after them)."""
    overrides = [
        f"{args.group}={option}",
        f"trainer.seed={seed}",
        f"trainer.time_budget_s={args.budget_s}",
        "trainer.max_steps=1000000",
        "optim.schedule=cosine_time",
    ]
    overrides += [f"optim.lr={lr:g}"] if lr is not None else []
    return Job(
        f"{option} seed {seed}" + (f" lr {lr:g}" if lr is not None else ""),
        run_dir,
        train_cmd(
            args.task, run_dir, args.data_dir, args.hardware, args.threads, overrides + extra + args.sets[option]
        ),
    )


def fixed_lrs(pairs: list[str], options: list[str]) -> dict[str, float]:
    """``["fno=3e-3", ...]`` -> {option: lr}; an option that is not compared, or a bad number, is an error."""
    out = {}
    for pair in pairs:
        option, _, value = pair.partition("=")
        if option not in options:
            raise SystemExit(f"--lr {pair}: {option!r} is not one of the compared options {options}")
        try:
            out[option] = float(value)
        except ValueError:
            raise SystemExit(f"--lr {pair}: {value!r} is not a number") from None
    return out


def option_sets(pairs: list[str], options: list[str]) -> dict[str, list[str]]:
    """``["tiny=+stages.operator.objective.noise=0.01", ...]`` -> {option: [override, ...]} for every
    option (an option not named gets none); an option that is not compared is an error."""
    out: dict[str, list[str]] = {o: [] for o in options}
    for pair in pairs:
        option, _, override = pair.partition("=")
        if option not in options or not override:
            raise SystemExit(
                f"--set {pair}: expected OPTION=OVERRIDE with OPTION one of the compared options {options}"
            )
        out[option].append(override)
    return out


def pick_lrs(args: argparse.Namespace, extra: list[str]) -> dict[str, dict]:
    """Per option: every grid rate's validation mean rollout nRMSE (seed ``args.seeds[0]``) and the chosen one."""
    jobs = {
        (o, lr): job(o, args.seeds[0], args.out / o / "grid" / f"lr{lr:g}", args, extra, lr)
        for o in args.options
        for lr in args.lr_grid
    }
    run_jobs(list(jobs.values()), args.parallel, args.threads, args.force)
    grid = {}
    for o in args.options:
        val = {lr: last_val(jobs[o, lr].run_dir) for lr in args.lr_grid}
        finite = {lr: v for lr, v in val.items() if v == v}
        grid[o] = {"val": val, "chosen": min(finite, key=finite.get) if finite else None}
    return grid


def summarise(runs: dict[str, list[Path]]) -> dict:
    """Per option and task: mean and spread over seeds of rollout and one-step test nRMSE; budget figures."""
    out: dict = {"models": {}, "trivial": {}}
    first = final_test(next(iter(runs.values()))[0])
    tasks = tasks_of(first)
    for p in ("persistence", "mean_field"):  # the same data and splits for every run, so any run's will do
        out["trivial"][p] = {t: first["results"][p].get(f"nrmse/{t}") for t in tasks + ["mean"]}
    for name, dirs in runs.items():
        results = [final_test(d) for d in dirs]
        cell = {}
        for metric, prefix in (("rollout", "nrmse/"), ("one_step", "one_step/nrmse/")):
            cell[metric] = {
                t: mean_std([r["results"]["model"].get(prefix + t) for r in results]) for t in tasks + ["mean"]
            }
        metas = [r["meta"] for r in results]
        cell["budget"] = {
            "parameters": metas[0]["parameters"],
            "global_batch": metas[0]["global_batch"],
            "steps": mean_std([m["step"] for m in metas]),
            "samples_per_s": mean_std([mean_samples_per_s(d) for d in dirs]),
            "train_seconds": mean_std([m["train_seconds"] for m in metas]),
            "seeds": len(dirs),
            "device": metas[0].get("device"),
            "lr": run_lr(dirs[0]),
            "eval_samples": metas[0].get("eval_samples"),
            # when the runs ended: a machine's speed sets the steps a budget buys, so the hour matters
            "finished": [min(w), max(w)] if (w := [m["written"] for m in metas if m.get("written")]) else None,
        }
        out["models"][name] = cell
    out["tasks"] = tasks
    return out


def wins(summary: dict, name: str, reference: str | None) -> dict:
    """Families where ``name``'s mean rollout nRMSE is below the reference's and below both trivial predictors
    (persistence counts as beaten where it is undefined: steady tasks)."""
    tasks, mine = summary["tasks"], summary["models"][name]["rollout"]
    triv = summary["trivial"]
    ref = summary["models"].get(reference, {}).get("rollout") if reference and reference != name else None
    beats_ref = {t for t in tasks if ref is not None and mine[t][0] < ref[t][0]}
    beats_triv = {
        t
        for t in tasks
        if mine[t][0] < triv["mean_field"][t]
        and (triv["persistence"][t] is None or mine[t][0] < triv["persistence"][t])
    }
    return {
        "tasks": len(tasks),
        "reference": len(beats_ref) if ref is not None else None,
        "trivial": len(beats_triv),
        "all": len(beats_ref & beats_triv) if ref is not None else None,
    }


def _cell(ms: tuple[float, float]) -> str:
    return "–" if ms[0] != ms[0] else f"{fmt(ms[0])} ± {ms[1]:.2g}"


def _when(summary: dict) -> str:
    """The span in which the table's runs finished (each run's eval/final_test, the machine's clock)."""
    ends = [b["finished"] for m in summary["models"].values() if (b := m["budget"]).get("finished")]
    if not ends:
        return "Runs finished: not recorded in their eval/final_test."
    first, last = min(e[0] for e in ends), max(e[1] for e in ends)
    same_day = first[:10] == last[:10]  # ISO timestamps: the date is the first ten characters
    return f"Runs finished {first.replace('T', ' ')} to {last[11:] if same_day else last.replace('T', ' ')} (the machine's clock)."


def table(summary: dict, grid: dict | None, args: argparse.Namespace, extra: list[str]) -> str:
    """The markdown comparison: rollout and one-step tables, the budget rows, the win counts, the lr grid."""
    names, tasks = list(summary["models"]), summary["tasks"]
    any_model = summary["models"][names[0]]["budget"]
    vary = "--models" if args.group == "model" else f"--group {args.group} --options"
    cmd = (
        f"python launch/compare.py --task {args.task} --budget-s {args.budget_s:g} {vary} {' '.join(names)} "
        f"--seeds {' '.join(map(str, args.seeds))} --reference {args.reference}"
        + (f" --lr-grid {' '.join(f'{lr:g}' for lr in args.lr_grid)}" if args.lr_grid else "")
        + (f" --lr {' '.join(args.lr)}" if args.lr else "")
        + "".join(f" --set {o}={v}" for o, vs in args.sets.items() for v in vs)
        + (f" --parallel {args.parallel}" if args.parallel > 1 else "")
        + (f" -- {' '.join(extra)}" if extra else "")
    )
    lines = [
        f"Command: `{cmd}`",
        f"Date: {dt.date.today().isoformat()}; machine: {machine()}, device {any_model['device']}, "
        f"hardware.threads={args.threads}, {args.parallel} training(s) at a time; "
        f"{args.budget_s:g} s of training per run, lr warm-up then cosine over the elapsed time "
        f"(optim.schedule=cosine_time). Test split, physical units as in each run's eval/final_test, conditioning frames excluded, "
        f"{any_model['eval_samples'] or 'all'} trajectories per task.",
        _when(summary),
        f"Each model cell: mean ± sample standard deviation over {len(args.seeds)} seed(s) "
        f"({', '.join(map(str, args.seeds))}). Persistence and the training-mean field need no training.",
        "",
        "Autoregressive rollout nRMSE:",
        "",
        "| task | " + " | ".join(names) + " | persistence | training-mean field |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    triv = summary["trivial"]
    for t in tasks + ["mean"]:
        lines.append(
            f"| {t} | "
            + " | ".join(_cell(summary["models"][n]["rollout"][t]) for n in names)
            + f" | {fmt(triv['persistence'][t])} | {fmt(triv['mean_field'][t])} |"
        )
    lines += [
        "",
        "One step ahead (the true frames as context every step) nRMSE:",
        "",
        "| task | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for t in tasks + ["mean"]:
        lines.append(f"| {t} | " + " | ".join(_cell(summary["models"][n]["one_step"][t]) for n in names) + " |")
    lines += [
        "",
        f"| {args.group} | lr | parameters | steps | global batch | samples/s | training wall-clock (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        b = summary["models"][n]["budget"]
        lines.append(
            f"| {n} | {b['lr']:g} | {b['parameters'] / 1e6:.3f}M | "
            f"{b['steps'][0]:.0f} ± {b['steps'][1]:.0f} | {b['global_batch']} | "
            f"{b['samples_per_s'][0]:.1f} | {b['train_seconds'][0]:.0f} |"
        )
    lines += [
        "",
        f"Families (of {len(tasks)}) where a model's mean rollout nRMSE is lower than {args.reference}'s "
        "and lower than both persistence and the training-mean field (persistence counts as beaten on steady tasks):",
        "",
    ]
    for n in names:
        w = wins(summary, n, args.reference)
        vs_ref = f"ahead of {args.reference} on {w['reference']}/{w['tasks']}, " if w["reference"] is not None else ""
        both = f"; all three on {w['all']}/{w['tasks']}" if w["all"] is not None else ""
        lines.append(f"- {n}: {vs_ref}ahead of both trivial predictors on {w['trivial']}/{w['tasks']}{both}")
    if args.lr:
        lines += [
            "",
            f"Learning rate fixed with --lr ({', '.join(args.lr)}): chosen before this command, "
            "not on this machine's validation split here; a machine that buys more or fewer steps "
            "in the budget can move a model's best rate, so --lr-grid is the check.",
        ]
    if grid:
        lines += [
            "",
            f"Learning rate: each model trained once per rate (seed {args.seeds[0]}, the same budget and "
            "task); the rate with the lowest validation mean rollout nRMSE (the run's last validation) was "
            "used for every seed. The test split played no part.",
            "",
            "| " + args.group + " | " + " | ".join(f"lr {lr:g}" for lr in args.lr_grid) + " | chosen |",
            "|---|" + "---|" * (len(args.lr_grid) + 1),
        ]
        for n in names:
            g = grid[n]
            chosen = f"{g['chosen']:g}" if g["chosen"] is not None else "– (none finished; the config's lr)"
            lines.append(f"| {n} | " + " | ".join(fmt(g["val"][lr]) for lr in args.lr_grid) + f" | {chosen} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="pdebench2", help="a task group option (default pdebench2)")
    p.add_argument("--group", default="model", help="the config group whose options are compared (default model)")
    p.add_argument(
        "--options",
        "--models",
        nargs="+",
        default=["tiny", "fno", "unet"],
        dest="options",
        help="the options of --group to compare",
    )
    p.add_argument("--budget-s", type=float, default=120.0, help="training wall-clock per run (s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="trainer.seed of each run (default 0 1 2)")
    p.add_argument("--reference", default="fno", help="the option every model is counted against (default fno)")
    p.add_argument(
        "--lr-grid",
        type=float,
        nargs="+",
        default=None,
        help="learning rates to try per model (first seed, validation split) before the seeds run",
    )
    p.add_argument(
        "--lr",
        nargs="+",
        default=[],
        metavar="OPTION=LR",
        help="a fixed learning rate per option, e.g. the one an --lr-grid run chose on a smaller task "
        "(options not named keep their config's)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="set_pairs",
        metavar="OPTION=OVERRIDE",
        help="a Hydra override for one option's runs only (repeatable), e.g. the training objective "
        "a model was measured best with; overrides after -- apply to every option",
    )
    p.add_argument("--parallel", type=int, default=1, help="trainings at once, each with --threads threads (default 1)")
    p.add_argument("--out", type=Path, default=Path("compare"), help="where the runs and the table go")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="shared data directory; absent task files are generated there (data.generate=true)",
    )
    p.add_argument("--hardware", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: steady on a shared machine)")
    p.add_argument("--force", action="store_true", help="retrain runs that already finished")
    args, extra = p.parse_known_args(argv)
    extra = [e for e in extra if e != "--"]
    fixed = fixed_lrs(args.lr, args.options)
    args.sets = option_sets(args.set_pairs, args.options)
    if fixed and args.lr_grid:
        p.error("--lr and --lr-grid exclude each other: fix the rates or search them")
    grid = pick_lrs(args, extra) if args.lr_grid else None
    jobs = {
        o: [
            job(o, s, args.out / o / f"seed{s}", args, extra, grid[o]["chosen"] if grid else fixed.get(o))
            for s in args.seeds
        ]
        for o in args.options
    }
    run_jobs([j for js in jobs.values() for j in js], args.parallel, args.threads, args.force)
    summary = summarise({o: [j.run_dir for j in js] for o, js in jobs.items()})
    summary["lr_grid"] = (
        {o: {"val": {f"{lr:g}": v for lr, v in g["val"].items()}, "chosen": g["chosen"]} for o, g in grid.items()}
        if grid
        else None
    )
    text = table(summary, grid, args, extra)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.md").write_text(text)
    (args.out / "comparison.json").write_text(json.dumps(summary, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
