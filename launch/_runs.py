"""What launch/compare.py and launch/diagnose.py share: building ``python -m ups.train`` command lines,
running them (one or a few at a time), and reading back what a finished run wrote.

Like everything in launch/, this only starts ``ups`` commands and reads their files; ups/ does the work.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ups.records import read_records


@dataclass
class Job:
    """One ``python -m ups.*`` command and the run directory it writes."""

    name: str
    run_dir: Path
    cmd: list[str] = field(default_factory=list)
    done: Path | None = None  # the file that says the job is finished; None: the run's final evaluation

    def finished(self) -> bool:
        """Whether the job's output exists already (then it is reused, not rerun)."""
        return (self.done or self.run_dir / "eval" / "final_test.json").exists()


def train_cmd(task: str, run_dir: Path, data_dir: Path, hardware: str, threads: int, overrides: list[str]) -> list[str]:
    """``python -m ups.train`` for one run into ``run_dir`` on the shared data directory (same files, same splits)."""
    return [
        sys.executable,
        "-m",
        "ups.train",
        f"task={task}",
        f"hardware={hardware}",
        f"hardware.threads={threads}",
        f"paths.output_dir={run_dir}",
        f"paths.data_dir={data_dir}",
        "data.generate=true",
        *overrides,
    ]


def run_jobs(jobs: list[Job], parallel: int = 1, threads: int = 1, force: bool = False) -> None:
    """Run the jobs whose run is not finished (all with ``force``), ``parallel`` at a time.

    One at a time the output streams to the terminal; several at once each writes
    ``<run_dir>/launch.log``, so that their progress bars do not interleave. A failed job raises
    after the others have ended, naming its log.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # each run's torch threads, before torch starts
    todo = []
    for job in jobs:
        if job.finished() and not force:
            print(f"{job.name}: reusing {job.run_dir}", flush=True)
        else:
            todo.append(job)
    running: list[tuple[Job, subprocess.Popen, object]] = []
    failed: list[str] = []
    while todo or running:
        while todo and len(running) < max(1, parallel):
            job = todo.pop(0)
            print("$ " + " ".join(job.cmd), flush=True)
            log = None
            if parallel > 1:
                job.run_dir.mkdir(parents=True, exist_ok=True)
                log = open(job.run_dir / "launch.log", "w")
            running.append(
                (job, subprocess.Popen(job.cmd, env=env, stdout=log, stderr=subprocess.STDOUT if log else None), log)
            )
        for item in list(running):
            job, proc, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if log:
                log.close()
            if proc.returncode:
                failed.append(
                    f"{job.name} (exit {proc.returncode}" + (f"; log {job.run_dir / 'launch.log'})" if log else ")")
                )
            else:
                print(f"{job.name}: done", flush=True)
        if running:
            time.sleep(0.5)
    if failed:
        raise RuntimeError("failed: " + ", ".join(failed))


def final_test(run_dir: Path) -> dict:
    """The run's final test evaluation (``eval/final_test.json``: results and meta)."""
    return json.loads((run_dir / "eval" / "final_test.json").read_text())


def last_val(run_dir: Path, key: str = "nrmse/mean") -> float:
    """The run's last validation value of ``key`` (what model selection may look at; never the test split)."""
    vals = [r[key] for r in read_records(run_dir) if r.get("kind") == "eval" and r.get("split") == "val" and key in r]
    return vals[-1] if vals else float("nan")


def run_lr(run_dir: Path) -> float:
    """The base learning rate a run trained with (``optim.lr`` of its saved config)."""
    from omegaconf import OmegaConf

    return float(OmegaConf.load(run_dir / "config.yaml").optim.lr)


def mean_samples_per_s(run_dir: Path) -> float:
    """Mean throughput over the run's train records."""
    rates = [r["samples_per_s"] for r in read_records(run_dir) if r.get("kind") == "train"]
    return sum(rates) / len(rates) if rates else float("nan")


def tasks_of(result: dict) -> list[str]:
    """The task names a final_test.json scored (without the mean)."""
    return sorted(
        {k.split("/")[1] for k in result["results"]["model"] if k.startswith("nrmse/") and k.count("/") == 1} - {"mean"}
    )


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN for none."""
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0


def machine() -> str:
    """CPU model and core count (what a reader needs to compare wall-clock figures)."""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores"


def fmt(v: float | None) -> str:
    """A table cell: 4 significant digits, an en dash for none."""
    return "–" if v is None or v != v else f"{v:.4g}"
