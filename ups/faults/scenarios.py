"""The fault scenarios: each numbered failure of the reliability issue, and the kills and signals
whose resume must lose at most one evaluation interval (none for a signal).

A scenario runs real ``python -m ups.train`` commands through :class:`~ups.faults.harness.Ctx` and
fills one :class:`~ups.faults.harness.Row`: what a user would see, and whether that is what UPS
promises in ``docs/reliability.md``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Callable

from ups.faults.harness import HUNG, Ctx, Proc, Row, last_step, records

SCENARIOS: list[tuple[str, str, str, Callable[[Ctx, Row], None]]] = []


def scenario(name: str, issue: str, expected: str):
    """Register ``fn(ctx, row)`` as a scenario of the table."""

    def wrap(fn: Callable[[Ctx, Row], None]) -> Callable[[Ctx, Row], None]:
        SCENARIOS.append((name, issue, expected, fn))
        return fn

    return wrap


def exit_of(p: Proc) -> str:
    """The exit column: the status, or that the command hung."""
    return HUNG if p.hung else str(p.rc)


def message_of(p: Proc, width: int = 110) -> str:
    """The line of stderr that says what happened, cut to ``width``."""
    # the message itself, not the library warnings or torch's own log lines ("W1202 03:22:45 ...") around it
    lines = [
        ln.strip()
        for ln in p.stderr.splitlines()
        if ln.strip() and "Warning" not in ln and not re.match(r"[WIE]\d{4} ", ln)
    ]
    # after a traceback the exception itself, on the last line, says what happened
    tb = any(ln.startswith(("Traceback", "Error executing job")) for ln in lines)
    text = (lines[-1] if tb else lines[0]) if lines else "(no stderr)"
    return text if len(text) <= width else text[: width - 3] + "..."


def _record(row: Row, p: Proc) -> None:
    row.exit, row.seconds, row.orphans = exit_of(p), round(p.seconds, 1), p.orphans


def expect_error(row: Row, p: Proc, *needles: str) -> None:
    """Pass when the command exits 1 with one paragraph on stderr that contains every needle."""
    _record(row, p)
    short, n = p.paragraph()
    found = all(nd.lower() in p.stderr.lower() for nd in needles)
    row.observed = f"{message_of(p)} [{n} stderr lines]"
    row.ok = p.rc == 1 and short and found
    if not found:
        row.notes.append(f"stderr lacks one of {needles}")


# ------------------------------------------------------------------------------- step failures
@scenario(
    "fsdp2-oom-one-rank", "1", "the job stops within seconds (no agreed skip is possible mid-forward), one paragraph"
)
def fsdp2_oom(ctx: Ctx, row: Row) -> None:
    p = ctx.train(
        ctx.base("fsdp2-oom", "parallelism=fsdp2_2", "trainer.max_steps=10", "faults.oom_rank=0", "faults.oom_step=3")
    )
    _record(row, p)
    n = len([ln for ln in p.stderr.splitlines() if ln.strip()])
    row.observed = f"exit {row.exit} after {p.seconds:.0f} s: {message_of(p, 70)} [{n} stderr lines]"
    row.ok = p.rc == 1 and p.seconds < 60 and "out of memory" in p.stderr and "Traceback" not in p.stderr


@scenario("ddp2-oom-one-rank", "-", "both ranks skip the step together and the run finishes")
def ddp2_oom(ctx: Ctx, row: Row) -> None:
    p = ctx.train(
        ctx.base("ddp2-oom", "parallelism=ddp2", "trainer.max_steps=10", "faults.oom_rank=1", "faults.oom_step=3")
    )
    _record(row, p)
    skipped = max((r.get("skipped_steps", 0) for r in records(ctx.run_dir("ddp2-oom"))), default=0)
    row.observed = f"exit {row.exit}, {skipped} step skipped, {last_step(ctx.run_dir('ddp2-oom'))} steps done"
    row.ok = p.rc == 0 and skipped == 1


@scenario("diverged-weights", "2", "stops after trainer.max_consecutive_skips skipped steps, naming the cause")
def diverged(ctx: Ctx, row: Row) -> None:
    p = ctx.train(ctx.base("diverged", "optim.lr=1e30"), cap_s=min(ctx.cap_s, 120))
    expect_error(row, p, "non-finite")


_CPU_OOM = """
import torch
_call, _n = torch.nn.Module.__call__, [0]
def _call_with_oom(self, *a, **k):
    if self.training and torch.is_grad_enabled() and type(self).__name__ == 'LatentSurrogate':
        _n[0] += 1
        if _n[0] == 3:  # what the CPU allocator raises: a RuntimeError, not torch.OutOfMemoryError
            raise RuntimeError('[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can\\'t allocate memory: '
                               'you tried to allocate 4294967296 bytes')
    return _call(self, *a, **k)
torch.nn.Module.__call__ = _call_with_oom
"""

_BACKWARD_OOM = """
import torch
_backward, _n = torch.Tensor.backward, [0]
def _backward_with_oom(self, *a, **k):
    _n[0] += 1
    if _n[0] == 3:
        raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB (injected in backward)')
    return _backward(self, *a, **k)
torch.Tensor.backward = _backward_with_oom
"""


@scenario("cpu-oom-in-forward", "16", "the CPU allocator's RuntimeError follows trainer.on_oom: one step skipped")
def cpu_oom(ctx: Ctx, row: Row) -> None:
    p = ctx.train(ctx.base("cpu-oom", "trainer.max_steps=10"), patch=_CPU_OOM)
    _record(row, p)
    skipped = max((r.get("skipped_steps", 0) for r in records(ctx.run_dir("cpu-oom"))), default=0)
    row.observed = f"exit {row.exit}, {skipped} step skipped" if p.rc == 0 else f"exit {row.exit}: {message_of(p, 80)}"
    row.ok = p.rc == 0 and skipped == 1


@scenario(
    "oom-in-backward", "16", "one paragraph (stop: other ranks may be inside the gradient all-reduce); rerun resumes"
)
def backward_oom(ctx: Ctx, row: Row) -> None:
    p = ctx.train(ctx.base("backward-oom"), patch=_BACKWARD_OOM)
    expect_error(row, p, "out of memory in backward")
    again = ctx.train(ctx.base("backward-oom"))
    row.ok = row.ok and again.rc == 0
    row.observed += f"; rerun exit {exit_of(again)}"


# ------------------------------------------------------------------------------------ user data
@scenario("broken-link-in-data-dir", "3", "data error naming the link; the link is not replaced, nothing generated")
def broken_link(ctx: Ctx, row: Row) -> None:
    links = ctx.work / "data-links"
    links.mkdir(exist_ok=True)
    link = links / "1D_Burgers_Sols_Nu0.1.hdf5"
    if not link.is_symlink():
        link.symlink_to("/mnt/unmounted-share/1D_Burgers_Sols_Nu0.1.hdf5")
    p = ctx.train(ctx.base("broken-link", data=links))
    expect_error(row, p, str(link))
    intact = link.is_symlink() and os.readlink(link) == "/mnt/unmounted-share/1D_Burgers_Sols_Nu0.1.hdf5"
    others = [q.name for q in links.iterdir() if q != link and not q.name.startswith(".ups_")]
    row.observed += f"; link {'intact' if intact else 'REPLACED'}; {len(others)} other files written"
    row.ok = row.ok and intact and not others


@scenario("mistyped-data-dir", "3", "data error naming the directory; the directory is not created")
def mistyped_dir(ctx: Ctx, row: Row) -> None:
    typo = ctx.work / "pdebnech"
    shutil.rmtree(typo, ignore_errors=True)
    p = ctx.train(ctx.base("typo-dir", data=typo))
    expect_error(row, p, str(typo))
    row.observed += f"; directory {'CREATED' if typo.exists() else 'not created'}"
    row.ok = row.ok and not typo.exists()


@scenario("concurrent-generation", "5", "two runs generating into one new directory both finish")
def concurrent_generation(ctx: Ctx, row: Row) -> None:
    shared = ctx.work / "data-generated-twice"
    shutil.rmtree(shared, ignore_errors=True)
    procs = [
        ctx.start(ctx.base(f"generate-{i}", *ctx.generate_flag(), "trainer.max_steps=5", data=shared)) for i in range(2)
    ]
    done = [ctx.finish(q) for q in procs]
    row.exit = ", ".join(exit_of(p) for p in done)
    row.seconds, row.orphans = round(max(p.seconds for p in done), 1), sum(p.orphans for p in done)
    row.observed = "exits " + row.exit + "".join(f"; {message_of(p, 60)}" for p in done if p.rc != 0)
    row.ok = all(p.rc == 0 for p in done)


@scenario("permission-denied", "10", "data error naming the file and 'permission' (not 'truncated or corrupted')")
def permission_denied(ctx: Ctx, row: Row) -> None:
    locked = ctx.work / "data-unreadable"
    locked.mkdir(exist_ok=True)
    name = "1D_Burgers_Sols_Nu0.1.hdf5"
    if not (locked / name).exists():
        shutil.copy(ctx.data / name, locked / name)
    os.chmod(locked / name, 0)
    p = ctx.train(ctx.base("permission", data=locked), as_plain_user=True)
    expect_error(row, p, "permission", name)
    if "truncated" in p.stderr.lower() or "corrupt" in p.stderr.lower():
        row.ok = False


@scenario("data-dir-is-a-file", "10", "data error naming the path")
def data_dir_is_file(ctx: Ctx, row: Row) -> None:
    a_file = ctx.work / "not-a-directory"
    a_file.write_text("x")
    p = ctx.train(ctx.base("dir-is-file", data=a_file))
    expect_error(row, p, str(a_file))


@scenario("wrong-shape", "10", "data error naming the file and two different shapes")
def wrong_shape(ctx: Ctx, row: Row) -> None:
    import h5py
    import numpy as np

    bad_dir = ctx.work / "data-wrong-shape"
    bad_dir.mkdir(exist_ok=True)
    bad = bad_dir / "1D_Burgers_Sols_Nu0.1.hdf5"
    shutil.copy(ctx.data / bad.name, bad)
    with h5py.File(bad, "r+") as f:
        n = f["tensor"].shape[0]
        del f["tensor"]
        f["tensor"] = np.zeros((n, 41, 16, 4), np.float32)
    p = ctx.train(ctx.base("wrong-shape", data=bad_dir))
    expect_error(row, p, bad.name, "(")
    shapes = [s for s in ("(%d, 41, 16, 4)" % n,) if p.stderr.count(s) > 1]
    if shapes:
        row.ok, row.notes = False, row.notes + ["the message compares a shape with itself"]


@scenario("disk-full", "10", "I/O error naming the file being written; a rerun on the still full disk says the same")
def disk_full(ctx: Ctx, row: Row) -> None:
    mount = ctx.work / "full-disk"
    mount.mkdir(exist_ok=True)
    # 5 MB: the run's logs and two checkpoints fit, the third does not
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5M", "tmpfs", str(mount)], capture_output=True).returncode:
        row.observed, row.ok = "not run: mounting a small tmpfs needs root", True
        row.notes.append("skipped")
        return
    try:
        args = ctx.base("disk-full") + [f"paths.output_dir={mount / 'run'}"]
        p = ctx.train(args)
        expect_error(row, p, str(mount / "run"), "No space left")
        again = ctx.train(args)  # still full: it must fail the same way, not worse
        row.observed += f"; rerun on the full disk: exit {exit_of(again)}, {again.paragraph()[1]} stderr lines"
        row.ok = row.ok and again.rc == 1 and again.paragraph()[0]
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


# ---------------------------------------------------------------------------------- configuration
# (scenario, failure of the issue, override, words the message must contain)
_CONFIG_ERRORS = [
    ("lr-inf", "2, 11", "optim.lr=inf", ("optim.lr",)),
    ("lr-nan", "11", "optim.lr=nan", ("optim.lr",)),
    ("lr-negative", "11", "optim.lr=-0.001", ("optim.lr",)),
    ("eval-every-0", "11", "trainer.eval_every=0", ("trainer.eval_every",)),
    ("key-added-beside-schema", "11", "+trainer.max_step=10", ("max_step", "max_steps")),
]


def _config_error(override: str, needles: tuple[str, ...]) -> Callable[[Ctx, Row], None]:
    def check(ctx: Ctx, row: Row) -> None:
        expect_error(row, ctx.train(ctx.base(row.scenario, override)), *needles)

    return check


for _name, _issue, _override, _needles in _CONFIG_ERRORS:
    scenario(_name, _issue, f"config error naming {' and '.join(_needles)}, before any work")(
        _config_error(_override, _needles)
    )


@scenario("ddp4-on-a-cpu-machine", "10", "one paragraph; the advice is a parallelism that exists (not ddp0)")
def ddp4_gpu(ctx: Ctx, row: Row) -> None:
    p = ctx.train(ctx.base("ddp4-gpu", "parallelism=ddp4", hardware="gpu"))
    expect_error(row, p, "4 GPUs")
    if "ddp0" in p.stderr:
        row.ok, row.notes = False, row.notes + ["advises parallelism=ddp0"]
