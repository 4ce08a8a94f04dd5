"""The machinery of the fault-injection runs: launching ``python -m ups.train`` as a user would,
injecting a fault (a signal, a kill, a patched function, a damaged file), and measuring what a user
would see (exit status, time to exit, stderr, processes left behind, data files changed, steps lost).

Every command runs in its own session with a marker in its environment, so its ranks can be found
(and, after a hang, killed) without touching anything else on the machine.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ups.records import read_records

MARKER = "UPS_FAULTS_TAG"
HUNG = "hung (killed at the cap)"  # the exit column of a command still running at the cap
# Run ``ups.train`` after executing the patch in UPS_FAULTS_PATCH (a fault that needs code, e.g. an
# out-of-memory error in backward); only the first process of a command applies it.
_PATCHED_MAIN = (
    "import os, runpy, sys\n"
    "patch = os.environ.pop('UPS_FAULTS_PATCH', '')\n"
    "exec(patch)\n"
    "sys.argv = ['ups.train'] + sys.argv[1:]\n"
    "runpy.run_module('ups.train', run_name='__main__')\n"
)


@dataclass
class Proc:
    """What one finished command showed."""

    rc: Optional[int]  # None: still running at the cap (a hang), then killed
    seconds: float  # from start (or from the injected fault, where there is one) to exit
    stdout: str
    stderr: str
    orphans: int = 0  # processes of the command still alive 30 s after it exited

    @property
    def hung(self) -> bool:
        return self.rc is None

    def paragraph(self) -> tuple[bool, int]:
        """(stderr is one short paragraph without a traceback, its number of non-empty lines)."""
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        # warnings from libraries (one line each) are not the error message itself
        error = [ln for ln in lines if "Warning:" not in ln and not ln.lstrip().startswith("warnings.warn")]
        return (0 < len(error) <= 6 and not any("Traceback" in ln for ln in error)), len(lines)


@dataclass
class Row:
    """One line of the fault table."""

    scenario: str
    issue: str  # the numbered failure of the reliability issue it reproduces ('-' for a general case)
    expected: str
    observed: str = ""
    ok: bool = False
    exit: str = ""
    seconds: Optional[float] = None
    orphans: Optional[int] = None
    data_changed: Optional[int] = None
    work_lost: Optional[int] = None  # optimizer steps redone after the fault (None: not applicable)
    notes: list[str] = field(default_factory=list)


class Ctx:
    """Paths, the Python to run, and helpers shared by the scenarios."""

    def __init__(self, workdir: Path, python: str, pythonpath: Optional[str], before: bool, cap_s: float):
        self.work, self.python, self.before, self.cap_s = Path(workdir), python, before, cap_s
        self.data = self.work / "data"
        self.cwd = self.work / "cwd"  # Hydra's outputs/ of commands without paths.output_dir land here
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        if pythonpath:
            self.env["PYTHONPATH"] = pythonpath
        self._n = 0
        self.reference: dict[str, dict] = {}

    # ----------------------------------------------------------------------------------- commands
    def base(
        self, name: str, *extra: str, data: Optional[Path] = None, task: str = "burgers1d", hardware: str = "cpu"
    ) -> list[str]:
        """The overrides of a small single-process run into ``runs/<name>`` (40 steps, evaluated every 10)."""
        return [
            f"task={task}",
            "model=tiny",
            f"hardware={hardware}",
            "hardware.threads=1",
            f"paths.data_dir={data or self.data}",
            f"paths.output_dir={self.run_dir(name)}",
            "trainer.max_steps=40",
            "trainer.eval_every=10",
            "trainer.steps_per_epoch=16",
            "trainer.batch_size=8",
            "trainer.log_every=1",
            "data.eval_samples=2",
            *extra,
        ]

    def run_dir(self, name: str) -> Path:
        return self.work / "runs" / name

    def generate_flag(self) -> list[str]:
        """``data.generate=true`` where it exists (the code before the fix generated anywhere)."""
        return [] if self.before else ["data.generate=true"]

    def start(
        self, args: list[str], patch: str = "", module: bool = True, as_plain_user: bool = False
    ) -> subprocess.Popen:
        """Start ``python -m ups.train <args>`` (or ``python <args>`` with ``module=False``)."""
        self._n += 1
        tag = f"{os.getpid()}-{self._n}"
        full_env = dict(self.env, **{MARKER: tag})
        if patch:
            full_env["UPS_FAULTS_PATCH"] = patch
            cmd = [self.python, "-c", _PATCHED_MAIN, *args]
        else:
            cmd = [self.python, "-m", "ups.train", *args] if module else [self.python, *args]
        # files, not pipes: ranks that outlive a killed launcher would hold a pipe open
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"{tag}.out", "w") as out, open(logs / f"{tag}.err", "w") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=self.cwd,
                env=full_env,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=_without_root_file_access if as_plain_user else None,
            )
        proc.ups_tag, proc.ups_logs, proc.ups_t0 = tag, logs / tag, time.monotonic()  # type: ignore[attr-defined]
        return proc

    def finish(
        self,
        proc: subprocess.Popen,
        since: Optional[float] = None,
        cap_s: Optional[float] = None,
        orphan_wait_s: float = 30.0,
    ) -> Proc:
        """Wait for ``proc`` (at most the cap, then kill its whole session: a hang) and count its orphans.
        The time to exit counts from ``since`` (the injected fault) or from the start."""
        start = proc.ups_t0 if since is None else since  # type: ignore[attr-defined]
        tag = proc.ups_tag  # type: ignore[attr-defined]
        try:
            rc: Optional[int] = proc.wait(timeout=cap_s or self.cap_s)
        except subprocess.TimeoutExpired:
            _kill_session(proc)
            proc.wait()
            rc = None
        seconds = time.monotonic() - start
        orphans = count_alive(tag, orphan_wait_s)
        if orphans:
            kill_tagged(tag)  # the table reports them; the next scenario must not inherit them
        logs = proc.ups_logs  # type: ignore[attr-defined]
        return Proc(rc, seconds, Path(f"{logs}.out").read_text(), Path(f"{logs}.err").read_text(), orphans)

    def train(self, args: list[str], patch: str = "", cap_s: Optional[float] = None, **kw) -> Proc:
        """Run ``python -m ups.train <args>`` to the end."""
        return self.finish(self.start(args, patch=patch, **kw), cap_s=cap_s)

    # ------------------------------------------------------------------------------ observations
    def wait_for(self, proc: subprocess.Popen, ready: Callable[[], bool], timeout_s: float = 120.0) -> bool:
        """Poll until ``ready()`` holds (True) or the process has exited or the time is up (False)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and proc.poll() is None:
            if ready():
                return True
            time.sleep(0.02)
        return False

    def reference_of(self, name: str) -> dict:
        """Final loss, validation nRMSE and stdout of an uninterrupted run of ``base(name)`` (cached)."""
        if name not in self.reference:
            p = self.train(self.base(f"reference-{name}"))
            self.reference[name] = dict(final(self.run_dir(f"reference-{name}")), epoch_line=epoch_line(p.stdout))
        return self.reference[name]


# ---------------------------------------------------------------------------------- run directory
def records(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl``, [] before the first one (a torn last line, from a kill, is dropped)."""
    return read_records(run_dir, missing_ok=True)


def last_step(run_dir: Path) -> int:
    """The highest optimizer step logged so far (0 before the first)."""
    return max((r["step"] for r in records(run_dir) if r.get("kind") == "train"), default=0)


def final(run_dir: Path) -> dict:
    """The last training loss and the last validation nRMSE logged per step (last record wins)."""
    by_step: dict[tuple[str, int], dict] = {}
    for r in records(run_dir):
        if r.get("kind") in ("train", "eval") and r.get("split", "val") == "val":
            by_step[(r["kind"], r["step"])] = r
    train = [v for (k, _), v in sorted(by_step.items()) if k == "train"]
    val = [v for (k, _), v in sorted(by_step.items()) if k == "eval"]
    return {
        "step": train[-1]["step"] if train else None,
        "loss": train[-1]["loss"] if train else None,
        "val": val[-1].get("nrmse/mean") if val else None,
    }


def epoch_line(stdout: str) -> Optional[str]:
    """The closing summary's line of epoch-mean training losses."""
    return next((ln for ln in stdout.splitlines() if ln.startswith("mean train loss")), None)


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints, oldest first (any stage folder, or the flat layout of older runs)."""
    root = Path(run_dir) / "checkpoints"
    return sorted((p for p in root.rglob("step_*") if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def data_checksums(data_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``data_dir`` except UPS's own caches (``.ups_stats/``, lock files)."""
    out = {}
    for p in sorted(Path(data_dir).rglob("*")):
        rel = p.relative_to(data_dir)
        if ".ups_stats" in rel.parts or p.name.startswith(".ups_") or p.is_symlink() or not p.is_file():
            continue
        out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def changed(before: dict[str, str], after: dict[str, str]) -> int:
    """Files modified or removed (new files are not the user's)."""
    return sum(1 for k, v in before.items() if after.get(k) != v)


# -------------------------------------------------------------------------------------- processes
def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)


def tagged(tag: str) -> list[int]:
    """PIDs of live processes carrying ``tag`` (zombies excluded)."""
    if not tag:
        return []
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid() and _environ(int(d.name)).get(MARKER) == tag:
            try:
                if " Z " not in (d / "stat").read_text().split(")", 1)[1][:4]:
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def count_alive(tag: str, wait_s: float) -> int:
    """How many processes with ``tag`` are still alive after up to ``wait_s`` seconds."""
    end = time.monotonic() + wait_s
    while tagged(tag) and time.monotonic() < end:
        time.sleep(0.5)
    return len(tagged(tag))


def kill_tagged(tag: str) -> None:
    for pid in tagged(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _without_root_file_access() -> None:
    """In the child, before exec: root keeps its uid but loses the right to ignore file modes
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so a mode-000 file fails as it would for a user."""
    if os.geteuid() == 0:
        import ctypes

        prctl, pr_capbset_drop = ctypes.CDLL(None).prctl, 24
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            prctl(pr_capbset_drop, cap, 0, 0, 0)


def _kill_session(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
