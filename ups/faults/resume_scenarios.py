"""Scenarios that interrupt a run (kill -9, signals, damaged checkpoints) and then rerun the same
command, as a user or a scheduler would. Scenarios of a run without an interruption (a second run
in the same directory, logging and per-task losses under two ranks, the test split) are in
``run_scenarios.py``.

Work lost is counted from ``metrics.jsonl``: every optimizer step logged twice was done twice. A
single-process rerun is also compared with an uninterrupted run of the same command: its last loss,
last validation nRMSE and epoch-mean losses must be bit-identical, which they are only if the
checkpoint it resumed from was complete and intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

from ups.faults.harness import Ctx, Proc, Row, checkpoints, count_alive, epoch_line, final, last_step, records, tagged
from ups.faults.scenarios import exit_of, expect_error, message_of, scenario

INTERVAL = 10  # trainer.eval_every of Ctx.base: a checkpoint every 10 steps


def redone_steps(run_dir: Path) -> int:
    """Optimizer steps logged more than once (each was trained again after a resume)."""
    steps = [r["step"] for r in records(run_dir) if r.get("kind") == "train"]
    return len(steps) - len(set(steps))


def interrupt_and_resume(
    ctx: Ctx,
    row: Row,
    name: str,
    fault: Callable[[subprocess.Popen], None],
    *extra: str,
    at_step: int = 25,
    damage: Optional[Callable[[Path], str]] = None,
    max_lost: Optional[int] = INTERVAL,
    want_rc: Optional[int] = None,
) -> Optional[Proc]:
    """Start ``base(name)``, apply ``fault`` once step ``at_step`` is logged, optionally damage the
    checkpoints, rerun the same command, and judge exit, lost work and (single process) identity.
    Returns what the interrupted command showed."""
    run_dir = ctx.run_dir(name)
    shutil.rmtree(run_dir, ignore_errors=True)
    args = ctx.base(name, *extra)
    proc = ctx.start(args)
    if not ctx.wait_for(proc, lambda: last_step(run_dir) >= at_step and bool(checkpoints(run_dir))):
        p = ctx.finish(proc)
        row.exit, row.observed = exit_of(p), f"the run ended before step {at_step}: {message_of(p, 80)}"
        return None
    t_fault = time.monotonic()
    fault(proc)
    p = ctx.finish(proc, since=t_fault)
    row.exit, row.seconds, row.orphans = exit_of(p), round(p.seconds, 1), p.orphans
    done = last_step(run_dir)
    notes = [damage(run_dir)] if damage else []
    again = ctx.train(args)
    row.work_lost = redone_steps(run_dir)
    warned = [ln for ln in again.stderr.splitlines() if "WARNING" in ln and "checkpoint" in ln.lower()]
    row.observed = (
        f"exit {row.exit} {p.seconds:.1f} s after the fault at step {done}; rerun exit {exit_of(again)}, "
        f"{row.work_lost} steps redone"
    )
    if warned:
        row.observed += f"; warned: {warned[0].split(' - ', 1)[-1][:90]}"
    ok = again.rc == 0 and (want_rc is None or p.rc == want_rc) and not p.hung
    if max_lost is not None:
        ok = ok and row.work_lost <= max_lost
    if not extra:  # single process: the rerun must equal an uninterrupted run
        ref = ctx.reference_of("single")
        same = final(run_dir) == {k: ref[k] for k in ("step", "loss", "val")}
        same_epochs = epoch_line(again.stdout) == ref["epoch_line"]
        row.observed += (
            "; identical to an uninterrupted run"
            if same and same_epochs
            else f"; DIFFERS from an uninterrupted run (final {'same' if same else 'differs'}, "
            f"epoch means {'same' if same_epochs else 'differ'})"
        )
        ok = ok and same and same_epochs
    row.ok, row.notes = ok, row.notes + notes
    return p


def _signal(sig: int, group: bool = False) -> Callable[[subprocess.Popen], None]:
    def send(proc: subprocess.Popen) -> None:
        (os.killpg if group else os.kill)(proc.pid, sig)  # a terminal's Ctrl-C reaches the whole group

    return send


# ----------------------------------------------------------------------------------------- kills
@scenario(
    "kill-9-mid-epoch",
    "14, kill",
    f"rerun resumes from the newest checkpoint (<= {INTERVAL} steps redone); "
    "final loss, val nRMSE and epoch means identical to an uninterrupted run",
)
def kill_single(ctx: Ctx, row: Row) -> None:
    # after the step-10 checkpoint, inside the first epoch (16 steps): the rerun's first epoch is cut
    interrupt_and_resume(ctx, row, "kill-9", _signal(signal.SIGKILL), at_step=12)


_KILL_IN_SAVE = """
import os
_rename, _replace, _n = os.rename, os.replace, [0]
def _die_on_4th(fn):
    def wrapped(src, dst, *a, **k):
        if 'checkpoints' in str(dst):
            _n[0] += 1
            if _n[0] == 4:  # mid-save: after two step checkpoints and the first 'best'
                os._exit(137)
        return fn(src, dst, *a, **k)
    return wrapped
os.rename, os.replace = _die_on_4th(_rename), _die_on_4th(_replace)
"""


@scenario(
    "kill-9-inside-a-checkpoint-save",
    "4, 8",
    "no torn checkpoint loaded: the rerun is identical to an uninterrupted run",
)
def kill_in_save(ctx: Ctx, row: Row) -> None:
    name = "kill-in-save"
    shutil.rmtree(ctx.run_dir(name), ignore_errors=True)
    p = ctx.train(ctx.base(name), patch=_KILL_IN_SAVE)
    row.exit, row.seconds, row.orphans = exit_of(p), round(p.seconds, 1), p.orphans
    done = last_step(ctx.run_dir(name))
    again = ctx.train(ctx.base(name))
    ref = ctx.reference_of("single")
    same = final(ctx.run_dir(name)) == {k: ref[k] for k in ("step", "loss", "val")}
    row.work_lost = redone_steps(ctx.run_dir(name))
    row.observed = (
        f"killed in a save at step {done} (exit {row.exit}); rerun exit {exit_of(again)}, "
        f"{row.work_lost} steps redone, {'identical to' if same else 'DIFFERS from'} an uninterrupted run"
    )
    if again.rc != 0:
        row.observed += f": {message_of(again, 80)}"
    row.ok = p.rc == 137 and again.rc == 0 and same and row.work_lost <= INTERVAL


@scenario("kill-9-launcher-ddp2", "7", "both ranks exit within seconds (no orphan after 30 s); rerun resumes")
def kill_launcher(ctx: Ctx, row: Row) -> None:
    name = "kill-launcher"
    run_dir = ctx.run_dir(name)
    shutil.rmtree(run_dir, ignore_errors=True)
    args = ctx.base(name, "parallelism=ddp2")
    proc = ctx.start(args)
    if not ctx.wait_for(proc, lambda: last_step(run_dir) >= 15):
        row.observed = "the run ended before step 15"
        return
    tag = proc.ups_tag  # type: ignore[attr-defined]
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    while tagged(tag) and time.monotonic() - t0 < 60:
        time.sleep(0.2)
    row.seconds = round(time.monotonic() - t0, 1)
    row.orphans = count_alive(tag, 0)
    for pid in tagged(tag):
        os.kill(pid, signal.SIGKILL)
    again = ctx.train(args)
    row.exit, row.work_lost = f"-9, rerun {exit_of(again)}", redone_steps(run_dir)
    row.observed = (
        f"ranks gone {row.seconds} s after the launcher; rerun exit {exit_of(again)}, {row.work_lost} steps redone"
    )
    row.ok = row.seconds < 30 and again.rc == 0 and row.work_lost <= INTERVAL


@scenario(
    "rank-crash-ddp2-restart",
    "-",
    f"the launcher restarts both ranks from the newest checkpoint (<= {INTERVAL} steps redone) and the run finishes",
)
def rank_crash(ctx: Ctx, row: Row) -> None:
    name = "rank-crash"
    shutil.rmtree(ctx.run_dir(name), ignore_errors=True)
    p = ctx.train(
        ctx.base(name, "parallelism=ddp2", "parallelism.max_restarts=1", "faults.crash_rank=1", "faults.crash_step=15")
    )
    row.exit, row.seconds, row.orphans = exit_of(p), round(p.seconds, 1), p.orphans
    row.work_lost = redone_steps(ctx.run_dir(name))
    log = ctx.run_dir(name) / "train.log"
    restart_logged = log.exists() and "restart" in log.read_text().lower()
    row.observed = (
        f"exit {row.exit}, {row.work_lost} steps redone; the restart is "
        f"{'in' if restart_logged else 'NOT in'} the run's train.log"
    )
    row.issue = "12"  # launcher events in the run directory's train.log
    row.ok = p.rc == 0 and row.work_lost <= INTERVAL and restart_logged


# --------------------------------------------------------------------------------------- signals
@scenario("sigterm", "9", "exit 143 with one line; checkpoint at the stop step, nothing redone; rerun identical")
def sigterm(ctx: Ctx, row: Row) -> None:
    interrupt_and_resume(ctx, row, "sigterm", _signal(signal.SIGTERM), max_lost=0, want_rc=143)


@scenario("ctrl-c", "9", "exit 130 with one line; checkpoint at the stop step, nothing redone; rerun identical")
def ctrl_c(ctx: Ctx, row: Row) -> None:
    interrupt_and_resume(ctx, row, "ctrl-c", _signal(signal.SIGINT, group=True), max_lost=0, want_rc=130)


@scenario("sigusr2-ddp2-launcher", "9", "SLURM's warning: exit 140 with one line; checkpoint, nothing redone")
def sigusr2(ctx: Ctx, row: Row) -> None:
    interrupt_and_resume(
        ctx, row, "sigusr2", _signal(signal.SIGUSR2), "parallelism=ddp2", at_step=15, max_lost=0, want_rc=140
    )


@scenario("ctrl-c-ddp2", "7, 9", "exit 130 within seconds (not after the exit barrier's timeout); nothing redone")
def ctrl_c_ddp(ctx: Ctx, row: Row) -> None:
    interrupt_and_resume(
        ctx,
        row,
        "ctrl-c-ddp2",
        _signal(signal.SIGINT, group=True),
        "parallelism=ddp2",
        at_step=15,
        max_lost=0,
        want_rc=130,
    )
    row.ok = row.ok and (row.seconds or 99) < 10


@scenario(
    "second-ctrl-c", "9", "the second Ctrl-C exits at once, without a checkpoint; rerun resumes from the newest one"
)
def second_ctrl_c(ctx: Ctx, row: Row) -> None:
    def twice(proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGINT)
        err = Path(f"{proc.ups_logs}.err")  # type: ignore[attr-defined]
        # the second once the first is acknowledged (two pending SIGINTs would merge into one) and
        # while its checkpoint is still being written
        ctx.wait_for(proc, lambda: "received SIGINT" in err.read_text(), timeout_s=10)
        with contextlib.suppress(ProcessLookupError):  # it may have ended already (no acknowledgement, say)
            os.killpg(proc.pid, signal.SIGINT)

    p = interrupt_and_resume(ctx, row, "ctrl-c-twice", twice, at_step=33)
    at_once = p is not None and "second interrupt: exiting now" in p.stderr
    row.observed += "; exited at once" if at_once else "; the second Ctrl-C did NOT exit at once"
    row.ok = row.ok and at_once


# ----------------------------------------------------------------------------------- checkpoints
def _newest(run_dir: Path) -> Path:
    return checkpoints(run_dir)[-1]


def _flip_bit(run_dir: Path) -> str:
    shard = max((p for p in _newest(run_dir).iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    return f"flipped one bit of {shard.relative_to(run_dir)}"


def _truncate(run_dir: Path) -> str:
    shard = max((p for p in _newest(run_dir).iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return f"truncated {shard.relative_to(run_dir)} to half"


def _bad_meta(run_dir: Path) -> str:
    meta = _newest(run_dir) / "meta.json"
    meta.write_text("{not json")
    return f"garbled {meta.relative_to(run_dir)}"


@scenario(
    "checkpoint-bit-flip",
    "4",
    "the damaged newest checkpoint is skipped with a warning naming the file; "
    "the older one is used; rerun identical to an uninterrupted run",
)
def bit_flip(ctx: Ctx, row: Row) -> None:
    interrupt_and_resume(ctx, row, "bit-flip", _signal(signal.SIGKILL), at_step=33, damage=_flip_bit, max_lost=None)


@scenario("checkpoint-truncated", "4", "the same for a truncated shard")
def truncated(ctx: Ctx, row: Row) -> None:
    interrupt_and_resume(ctx, row, "truncated", _signal(signal.SIGKILL), at_step=33, damage=_truncate, max_lost=None)


@scenario("checkpoint-bad-meta", "4", "the same for an unreadable meta.json")
def bad_meta(ctx: Ctx, row: Row) -> None:
    interrupt_and_resume(ctx, row, "bad-meta", _signal(signal.SIGKILL), at_step=33, damage=_bad_meta, max_lost=None)


@scenario("no-usable-checkpoint", "4", "one paragraph naming the damaged checkpoints; nothing loaded")
def none_usable(ctx: Ctx, row: Row) -> None:
    name = "none-usable"
    run_dir = ctx.run_dir(name)
    shutil.rmtree(run_dir, ignore_errors=True)
    proc = ctx.start(ctx.base(name))
    ctx.wait_for(proc, lambda: last_step(run_dir) >= 25 and bool(checkpoints(run_dir)))
    os.kill(proc.pid, signal.SIGKILL)
    ctx.finish(proc)
    for ckpt in checkpoints(run_dir):
        (ckpt / "meta.json").write_text("{not json")
    p = ctx.train(ctx.base(name))
    expect_error(row, p, "checkpoint")


@scenario("leftover-swap-copies", "8", "later saves of best and final succeed; the leftovers are recovered or removed")
def leftover_swap(ctx: Ctx, row: Row) -> None:
    name = "swap-leftover"
    root = ctx.run_dir(name) / "checkpoints"
    shutil.rmtree(ctx.run_dir(name), ignore_errors=True)
    first = ctx.train(ctx.base(name, "trainer.max_steps=20"))
    folders = {p.name: p for p in root.rglob("*") if p.is_dir()}
    if first.rc != 0 or "best" not in folders or "final" not in folders:
        row.observed = f"the first run failed: {message_of(first, 80)}"
        return
    best, fin = folders["best"], folders["final"]
    shutil.copytree(best, best.parent / ".best.old")  # killed after the second rename of a swap
    fin.rename(fin.parent / ".final.old")  # killed between the two renames
    p = ctx.train(ctx.base(name, "trainer.max_steps=40"))
    _exit_and = f"exit {exit_of(p)}"
    left = sorted(q.name for q in root.rglob(".*.old"))
    final_step = json.loads((fin / "meta.json").read_text()).get("step") if (fin / "meta.json").exists() else None
    row.exit, row.seconds, row.orphans = exit_of(p), round(p.seconds, 1), p.orphans
    row.observed = f"{_exit_and}; leftovers now {left or 'none'}; final at step {final_step}"
    if p.rc != 0:
        row.observed += f": {message_of(p, 80)}"
    row.ok = p.rc == 0 and not left and final_step == 40
