"""Scenarios of one run without an interruption: a second run in the same directory, logging under
torchrun, per-task losses across ranks and PDEBench's test split. They follow the resume scenarios
in the table (``python -m ups.faults`` imports this module after ``resume_scenarios``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

from ups.faults.harness import Ctx, Row, last_step, records
from ups.faults.scenarios import exit_of, expect_error, scenario


# ------------------------------------------------------------------------------- the run directory
@scenario("two-runs-one-directory", "6", "the second run is refused at once, naming the first; the first is unharmed")
def two_runs(ctx: Ctx, row: Row) -> None:
    name = "two-runs"
    shutil.rmtree(ctx.run_dir(name), ignore_errors=True)
    args = ctx.base(name, "trainer.max_steps=400")
    first = ctx.start(args)
    ctx.wait_for(first, lambda: last_step(ctx.run_dir(name)) >= 3)
    second = ctx.train(args, cap_s=120)
    expect_error(row, second, str(first.pid))
    os.kill(first.pid, signal.SIGTERM)  # end the long first run early; it saves and exits 143
    p1 = ctx.finish(first)
    row.observed += f"; the first run: exit {exit_of(p1)}"
    row.ok = row.ok and p1.rc == 143


@scenario(
    "torchrun-logging", "12", "INFO once (rank 0): one validation line per evaluation in the console and train.log"
)
def torchrun_logging(ctx: Ctx, row: Row) -> None:
    name = "torchrun"
    shutil.rmtree(ctx.run_dir(name), ignore_errors=True)
    args = [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "ups.train",
        *ctx.base(name, "parallelism=ddp2", "trainer.max_steps=20"),
    ]
    p = ctx.finish(ctx.start(args, module=False))
    log = ctx.run_dir(name) / "train.log"
    in_log = log.read_text().count("val nRMSE burgers1d=") if log.exists() else 0
    in_console = (p.stdout + p.stderr).count("val nRMSE burgers1d=")
    row.exit, row.seconds, row.orphans = exit_of(p), round(p.seconds, 1), p.orphans
    row.observed = f"exit {row.exit}; 2 evaluations logged {in_console}x on the console, {in_log}x in train.log"
    row.ok = p.rc == 0 and in_log == 2 and in_console == 2


@scenario("per-task-loss-ddp2", "13", "per-task losses of 2 ranks x batch 8 equal one process with batch 16")
def per_task_loss(ctx: Ctx, row: Row) -> None:
    def per_task(name: str, *extra: str) -> dict[str, float]:
        """The first logged loss of each task (batches hold one task each: steps 1-4 cover both)."""
        ctx.train(ctx.base(name, "trainer.max_steps=4", *extra, task="pdebench2"))
        out: dict[str, float] = {}
        for r in records(ctx.run_dir(name)):
            for k, v in r.items():
                if r.get("kind") == "train" and k.startswith("loss/"):
                    out.setdefault(k, v)
        return out

    row.exit = "0, 0"
    one = per_task("per-task-single", "trainer.batch_size=16")
    two = per_task("per-task-ddp2", "parallelism=ddp2")
    nan = float("nan")
    row.observed = ", ".join(f"{k}: {v:.5g} vs {two.get(k, nan):.5g}" for k, v in sorted(one.items())) or "no losses"
    # the steps after the first differ only by the order of floating-point sums
    row.ok = len(one) == 2 and all(abs(v - two.get(k, nan)) <= 1e-3 * abs(v) for k, v in one.items())


@scenario("group-file-test-split-n48", "15", "PDEBench's rule: N - int(0.9 N) = 5 test groups of 48")
def group_split(ctx: Ctx, row: Row) -> None:
    code = "from ups.data.tasks import split_indices; print(len(split_indices(48, 'group', 0.1, 0.1)['test']))"
    out = subprocess.run([ctx.python, "-c", code], cwd=ctx.cwd, env=ctx.env, capture_output=True, text=True)
    n = out.stdout.strip()
    row.exit, row.observed = str(out.returncode), f"{n or out.stderr.strip()[-80:]} test groups of 48"
    row.ok = n == "5"
