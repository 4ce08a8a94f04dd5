"""Read-speed benchmark: UPS's readers against PDEBench's own loaders on the same files.

    python -m ups.bench.reads [--data-dir DIR] [--tasks advection1d,darcy2d,swe2d]
                              [--pdebench-utils PATH] [--repeats N] [--json out.json]

For each task (synthetic files generated into ``--data-dir`` when absent) it takes the first file
and the samples PDEBench's own loader trains on (its ``if_test=False`` split: the last 90% for a
single file, the first 90% for a group-per-sample file), with the task's strides, and times a
construction plus one pass over every item (a first epoch), then a second pass (a later epoch), of

- PDEBench's ``FNODatasetSingle`` (``.hdf5``) or ``FNODatasetMult`` (``.h5``), as published in its
  0.1.0 wheel: items are (first ``initial_step`` frames, the whole trajectory, the grid), raw;
- UPS's ``TrajectoryDataset`` (whole normalised trajectories), lazy and preloaded;
- UPS's ``WindowDataset`` (``initial_step`` frames -> the next frame, normalised), lazy and
  preloaded; its items are windows, so its rate is not set against PDEBench's.

Each measurement runs in a forked child, so its peak resident memory (VmHWM minus the RSS at
the fork) is its own. Files are read once beforehand: the numbers are for a warm page cache.
PDEBench is not a dependency: its loader file (pure Python: torch, h5py, numpy) is loaded from
``--pdebench-utils`` or fetched with ``pip download`` into a cache folder (see ``pdebench_module``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import multiprocessing as mp
import os
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch

from ups.bench.common import load_average, machine_info, named_tasks
from ups.config import register_configs
from ups.data.datasets import TrajectoryDataset, WindowDataset
from ups.data.tasks import TaskData

PIP_COMMAND = ["pip", "download", "--no-deps", "--python-version", "3.10", "--only-binary=:all:", "pdebench==0.1.0"]
WHEEL_MEMBER = "pdebench/models/fno/utils.py"
LAYOUTS = {"tensor": "single file", "group": "group per sample", "ns_incom": "batch-first"}
PDEBENCH_ITEM = "(first k frames, trajectory, grid), raw, (X.., T, C)"
BENCH_SPLIT = "pdebench_train"  # the split added to each task: PDEBench's training samples of its first file


def cache_dir() -> Path:
    """Where a fetched PDEBench wheel and its loader file are kept."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ups" / "pdebench-0.1.0"


def _import_file(path: Path) -> ModuleType:
    # PDEBench calls torch.meshgrid without indexing= (its "ij" default, which it relies on)
    warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release")
    spec = importlib.util.spec_from_file_location("pdebench_fno_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pdebench_module(path: Path | None, fetch: bool = True) -> ModuleType:
    """PDEBench's ``models/fno/utils.py``: from ``path``, else the cache, else fetched with pip.

    Its wheel requires Python < 3.11, so it is downloaded for 3.10 without dependencies and only
    the one loader file is unpacked; nothing is installed. Exits with a one-line message when that
    is impossible (no network), saying how to provide the file.
    """
    if path is not None:
        if not path.is_file():
            raise SystemExit(f"--pdebench-utils {path}: no such file")
        return _import_file(path)
    target = cache_dir() / WHEEL_MEMBER
    if target.is_file():
        print(f"PDEBench loader: using the cached {target}", flush=True)
        return _import_file(target)
    how = f"get it with `{' '.join(PIP_COMMAND)} -d DIR`, unzip the wheel and pass --pdebench-utils DIR/{WHEEL_MEMBER}"
    if not fetch:
        raise SystemExit(f"no PDEBench loader given: {how}")
    cmd = [sys.executable, "-m", *PIP_COMMAND, "-d", str(cache_dir())]
    print(f"PDEBench loader: fetching its wheel (not installing it): {shlex.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(cache_dir().glob("pdebench-0.1.0-*.whl"))
    if proc.returncode != 0 or not wheels:
        reason = (proc.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise SystemExit(f"could not download PDEBench ({reason}); {how}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(WHEEL_MEMBER, cache_dir())
    print(f"PDEBench loader: unpacked {target} from {wheels[0].name}", flush=True)
    return _import_file(target)


def load_tasks(data_dir: Path, names: list[str]) -> list[TaskData]:
    """The named tasks with their default configs and a split holding PDEBench's training samples."""
    tasks = []
    for task in named_tasks(data_dir, names, "pdebench11"):
        ids = [(0, i) for i in pdebench_train(task.files[0].n_samples, task.family.layout)]
        tasks.append(dataclasses.replace(task, splits={**task.splits, BENCH_SPLIT: ids}))
    return tasks


def pdebench_train(n: int, layout: str, test_ratio: float = 0.1) -> range:
    """The sample indices PDEBench's loader returns with ``if_test=False`` (spec section 3)."""
    return range(int(n * (1 - test_ratio))) if layout == "group" else range(int(n * test_ratio), n)


def pdebench_dataset(module: ModuleType, task: TaskData) -> Any:
    """PDEBench's own dataset over the task's first file, with the task's strides where its API has them."""
    f, folder = task.files[0], str(task.files[0].path.parent) + "/"  # PDEBench concatenates folder + name
    if task.family.layout == "group":
        return module.FNODatasetMult(f.path.stem, initial_step=task.initial_step, saved_folder=folder, if_test=False)
    return module.FNODatasetSingle(
        f.path.name,
        initial_step=task.initial_step,
        saved_folder=folder,
        reduced_resolution=f.rr,
        reduced_resolution_t=f.rr_t,
        reduced_batch=f.rb,
        if_test=False,
        num_samples_max=f.max_samples or -1,
    )


def readers(task: TaskData, module: ModuleType | None, preload_gb: float) -> list[tuple[str, str, Callable]]:
    """(name, what an item is, factory) of every reader measured on ``task``."""
    out = []
    if module is not None:
        kind = "Mult" if task.family.layout == "group" else "Single"
        out.append((f"PDEBench FNODataset{kind}", PDEBENCH_ITEM, lambda: pdebench_dataset(module, task)))
    for gb, how in ((0.0, "lazy"), (preload_gb, "preload")):
        out.append(
            (
                f"UPS TrajectoryDataset, {how}",
                "trajectory (T, P, C), normalised, + cond",
                lambda gb=gb: TrajectoryDataset(task, BENCH_SPLIT, preload_max_gb=gb),
            )
        )
    for gb, how in ((0.0, "lazy"), (preload_gb, "preload")):
        out.append(
            (
                f"UPS WindowDataset, {how}",
                "window: k frames -> next frame, normalised, + cond",
                lambda gb=gb: WindowDataset(task, BENCH_SPLIT, preload_max_gb=gb),
            )
        )
    return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _one_pass(ds: Any) -> int:
    for i in range(len(ds)):
        ds[i]
    return len(ds)


def _child(factory: Callable, conn: Any) -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
    except OSError:
        pass
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    ds = factory()
    t1 = time.perf_counter()
    n = _one_pass(ds)
    t2 = time.perf_counter()
    _one_pass(ds)
    t3 = time.perf_counter()
    conn.send(
        {
            "items": n,
            "build_s": t1 - t0,
            "first_s": t2 - t0,
            "later_s": t3 - t2,
            "peak_mb": (_status_kib("VmHWM") - rss0) / 1024,
        }
    )
    conn.close()


def measure(factory: Callable, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` times and largest peak memory of ``factory()`` and two passes, each in a forked child."""
    ctx, runs = mp.get_context("fork"), []  # fork: the child inherits the built task, nothing is pickled
    for _ in range(repeats):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(factory, send))
        proc.start()
        send.close()
        try:
            result = recv.recv() if recv.poll(600) else None
        except EOFError:  # the child died before sending: its traceback is on stderr
            result = None
        proc.join()
        if result is None or proc.exitcode != 0:
            raise RuntimeError(f"measurement child failed (exit code {proc.exitcode})")
        runs.append(result)
    best = {k: min(r[k] for r in runs) for k in ("build_s", "first_s", "later_s")}
    n = runs[0]["items"]
    return {
        "items": n,
        **best,
        "peak_mb": max(r["peak_mb"] for r in runs),
        "first_items_per_s": n / best["first_s"],
        "later_items_per_s": n / best["later_s"],
    }


def same_values(task: TaskData, pdebench_ds: Any) -> bool:
    """Whether PDEBench's first training trajectory equals UPS's raw read of the same sample."""
    ups = task.files[0].read(task.splits[BENCH_SPLIT][0][1])
    theirs = np.moveaxis(np.asarray(pdebench_ds[0][1]), -2, 0)  # (X.., T, C) -> (T, X.., C)
    return ups.shape == theirs.shape and np.array_equal(ups, theirs)


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Locate or generate the data, measure every reader on every task, return the results (``argv``: the command's)."""
    torch.set_num_threads(args.threads)
    module = None if args.no_pdebench else pdebench_module(args.pdebench_utils)
    with tempfile.TemporaryDirectory(prefix="ups-reads-") as tmp:
        data_dir = Path(args.data_dir or Path(tmp) / "data")
        tasks = load_tasks(data_dir, args.tasks.split(","))
        for task in tasks:
            task.files[0].path.read_bytes()  # warm the page cache: every reader then sees the same
        info = {
            **machine_info(),
            "repeats": args.repeats,
            "preload_max_gb": args.preload_gb,
            "command": shlex.join(["python", "-m", "ups.bench.reads", *argv]),
            "pdebench": getattr(module, "__file__", None),
        }
        rows = []
        for task in tasks:
            f = task.files[0]
            base = {
                "task": task.name,
                "layout": LAYOUTS[task.family.layout],
                "file": f.path.name,
                "dim": task.family.dim,
                "rr": f.rr,
                "rr_t": f.rr_t,
                "initial_step": task.initial_step,
            }
            for name, item, factory in readers(task, module, args.preload_gb):
                row = {**base, "reader": name, "item": item, **measure(factory, args.repeats)}
                if name.startswith("PDEBench"):
                    row["same_values"] = same_values(task, factory())
                rows.append(row)
                print(f"  measured {task.name}: {name}", flush=True)
    info["loadavg_after"] = load_average()  # other work on the host skews every number
    return {"info": info, "rows": add_ratios(rows)}


def add_ratios(rows: list[dict]) -> list[dict]:
    """Each trajectory reader's first-epoch items/s over PDEBench's on the same task (same items)."""
    ref = {r["task"]: r["first_items_per_s"] for r in rows if r["reader"].startswith("PDEBench")}
    for r in rows:
        same_items = "Trajectory" in r["reader"] or r["reader"].startswith("PDEBench")
        r["vs_pdebench"] = r["first_items_per_s"] / ref[r["task"]] if same_items and r["task"] in ref else None
    return rows


def format_table(result: dict[str, Any]) -> str:
    """The results as a Markdown table under a header naming the date, versions, CPU and command."""
    i = result["info"]
    head = [
        f"`{i['command']}`",
        "",
        f"date {i['date']}, torch {i['torch']}, Python {i['python']}, CPU {i['cpu']} ({i['cpu_count']} CPUs, "
        f"{i['threads']} torch thread(s)), warm page cache, best of {i['repeats']}, preload_max_gb "
        f"{i['preload_max_gb']}, load average {i['loadavg_before']} -> {i['loadavg_after']}",
        "",
        "| task | layout | reader | item | items | build (s) | first epoch (items/s) | later epochs (items/s) "
        "| first epoch vs PDEBench | peak memory (MB) |",
        "|" + "---|" * 10,
    ]
    for r in result["rows"]:
        ratio = "—" if r["vs_pdebench"] is None else f"{r['vs_pdebench']:.2f}x"
        check = {True: " (same values)", False: " (values differ)"}.get(r.get("same_values"), "")
        head.append(
            f"| {r['task']} | {r['layout']}, {r['dim']}D | {r['reader']}{check} | {r['item']} | {r['items']} "
            f"| {r['build_s']:.3f} | {r['first_items_per_s']:,.0f} | {r['later_items_per_s']:,.0f} | {ratio} "
            f"| {r['peak_mb']:.1f} |"
        )
    return "\n".join(head)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry point: run, print the table, optionally write JSON."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m ups.bench.reads", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="where the synthetic data lives or is generated (default: a temp dir)")
    p.add_argument("--tasks", default="advection1d,cfd1d,darcy2d,diff_sorp1d,react_diff2d,swe2d")
    p.add_argument("--pdebench-utils", type=Path, help=f"PDEBench 0.1.0's {WHEEL_MEMBER} (default: fetch it)")
    p.add_argument("--no-pdebench", action="store_true", help="measure UPS's readers only")
    p.add_argument("--preload-gb", type=float, default=2.0, help="data.preload_max_gb of the preloaded readers")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--repeats", type=int, default=3, help="repeat each measurement, keep the best time")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    register_configs()
    result = run(args, argv)
    if args.json:  # first: a closed stdout (`| head`) must not lose the figures
        args.json.write_text(json.dumps(result, indent=1))
    print(format_table(result), flush=True)
    return result


if __name__ == "__main__":
    from ups.errors import exit_on_error

    with exit_on_error():
        main()
