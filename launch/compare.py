"""Train several models on the same tasks for the same wall-clock budget and write one comparison table.

    python launch/compare.py --task pdebench2 --budget-s 120 --out compare/pdebench2
    python launch/compare.py --task pdebench11 --budget-s 300 --models tiny fno unet -- data.eval_samples=8
    python launch/compare.py --task burgers1d --group stage --options operator operator_unrolled

Each model is one ``python -m ups.train`` run (``model=<option>``, or ``<group>=<option>`` to compare
the options of another config group, e.g. stages; ``trainer.time_budget_s``, a
constant learning rate after warm-up because the number of steps a budget buys is not known in
advance) into ``<out>/<option>/``; the runs share the data directory, so they see the same files
and splits. The table (``<out>/comparison.md``) takes each run's ``eval/final_test.json``: test
rollout nRMSE per task beside persistence and the training-mean field, parameters, steps, samples/s
and wall-clock. Like everything in launch/, this only builds command lines; ups/ does the work.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path


def train(option: str, args: argparse.Namespace, extra: list[str]) -> Path:
    """Run one model's training to its budget (or reuse a finished run); return its run directory."""
    run_dir = args.out / option
    result = run_dir / "eval" / "final_test.json"
    if result.exists() and not args.force:
        print(f"{option}: reusing {result}", flush=True)
        return run_dir
    cmd = [sys.executable, "-m", "ups.train", f"task={args.task}", f"{args.group}={option}", f"hardware={args.hardware}",
           f"hardware.threads={args.threads}", f"trainer.time_budget_s={args.budget_s}", "trainer.max_steps=1000000",
           "optim.schedule=constant", f"paths.output_dir={run_dir}", f"paths.data_dir={args.data_dir}", "data.generate=true", *extra]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return run_dir


def _mean_samples_per_s(run_dir: Path) -> float:
    rates = [r["samples_per_s"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if r.get("kind") == "train"]
    return sum(rates) / len(rates) if rates else float("nan")


def table(runs: dict[str, Path], args: argparse.Namespace, extra: list[str]) -> str:
    """The markdown comparison of the finished runs."""
    data = {name: json.loads((d / "eval" / "final_test.json").read_text()) for name, d in runs.items()}
    first, meta = next(iter(data.values()))["results"], next(iter(data.values()))["meta"]
    tasks = sorted({k.split("/")[1] for k in first["model"] if k.startswith("nrmse/") and k.count("/") == 1} - {"mean"})
    vary = "--models" if args.group == "model" else f"--group {args.group} --options"
    lines = [f"Command: `python launch/compare.py --task {args.task} --budget-s {args.budget_s:g} {vary} "
             f"{' '.join(runs)}" + (f" -- {' '.join(extra)}" if extra else "") + "`",
             f"Date: {dt.date.today().isoformat()}; machine: {_machine()}, "
             f"device {meta.get('device')}, hardware.threads={args.threads}; test split, autoregressive rollout "
             f"nRMSE (conditioning frames excluded), {meta.get('eval_samples') or 'all'} trajectories per task.", "",
             "| task | " + " | ".join(runs) + " | persistence | training-mean field |",
             "|---|" + "---|" * (len(runs) + 2)]
    for task in tasks + ["mean"]:
        cells = [data[n]["results"]["model"].get(f"nrmse/{task}") for n in runs]
        base = [first[p].get(f"nrmse/{task}") for p in ("persistence", "mean_field")]
        lines.append(f"| {task} | " + " | ".join(_fmt(v) for v in cells + base) + " |")
    lines += ["", "One step ahead (the true frames as context every step): test nRMSE.", "",
              "| task | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for task in tasks + ["mean"]:
        lines.append(f"| {task} | " + " | ".join(
            _fmt(data[n]["results"]["model"].get(f"one_step/nrmse/{task}")) for n in runs) + " |")
    lines += ["", f"| {args.group} | parameters | steps | global batch | samples/s | training wall-clock (s) |",
              "|---|---|---|---|---|---|"]
    for name, d in data.items():
        m = d["meta"]
        lines.append(f"| {name} | {m['parameters'] / 1e6:.3f}M | {m['step']} | {m['global_batch']} | "
                     f"{_mean_samples_per_s(runs[name]):.1f} | {m['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _machine() -> str:
    """CPU model and core count (what a reader needs to compare wall-clock figures)."""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores"


def _fmt(v: float | None) -> str:
    return "–" if v is None or v != v else f"{v:.4g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="pdebench2", help="a task group option (default pdebench2)")
    p.add_argument("--group", default="model", help="the config group whose options are compared (default model)")
    p.add_argument("--options", "--models", nargs="+", default=["tiny", "fno", "unet"], dest="options",
                   help="the options of --group to compare")
    p.add_argument("--budget-s", type=float, default=120.0, help="training wall-clock per model (s)")
    p.add_argument("--out", type=Path, default=Path("compare"), help="where the runs and the table go")
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="shared data directory; absent task files are generated there (data.generate=true)")
    p.add_argument("--hardware", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: steady on a shared machine)")
    p.add_argument("--force", action="store_true", help="retrain models whose run already finished")
    args, extra = p.parse_known_args(argv)
    extra = [e for e in extra if e != "--"]
    runs = {option: train(option, args, extra) for option in args.options}
    text = table(runs, args, extra)
    (args.out / "comparison.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
