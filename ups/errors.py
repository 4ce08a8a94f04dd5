"""Expected errors, as the user sees them: one paragraph on stderr, the traceback in the run's log.

The error classes live here, with no import beyond the standard library, so data, objectives and
training raise them without pulling in Hydra (``ups/config.py``) or torch's checkpoint code. Every
command-line entry point (``python -m ups.*``) runs its body inside :func:`exit_on_error`, so an
expected error reads the same from any of them, and from each rank of a launched job.
"""

from __future__ import annotations

import json
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

JOB_STATUS = "job_status.json"  # a multirun job's outcome, read by the sweep report (ups/sweeps/report.py)

# The exit status of a launched rank that stopped on an expected error and printed its paragraph, so
# the launcher does not repeat it as a crash with torch's failure report.
EXPECTED_EXIT = 3


class ConfigError(ValueError):
    """A config that composes but breaks a rule between fields."""


class DataFileError(ValueError):
    """A data file that cannot be read as the PDEBench layout it claims to be."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (corrupt, truncated, a file missing); the message names the file."""


class StopTraining(RuntimeError):
    """Raised when training must stop: on every rank for an agreed policy, on one rank when no agreement
    is possible (the launcher then ends the others)."""


# Checked in order: the first class that matches names the kind. FileNotFoundError is an OSError the
# user fixes by pointing at the data, hence "Data error" before the general I/O one.
KINDS = (
    (ConfigError, "Config error"),
    (CheckpointError, "Checkpoint error"),
    (StopTraining, "Training stopped"),
    (DataFileError, "Data error"),
    (FileNotFoundError, "Data error"),
    (OSError, "I/O error"),
)


def user_message(err: BaseException) -> str | None:
    """``"<kind>: <message>"`` for an error the user can act on; None for anything else (a bug, whose
    traceback is the useful part)."""
    return next((f"{kind}: {err}" for cls, kind in KINDS if isinstance(err, cls)), None)


def report_expected(err: BaseException, log_file: Path | None, prefix: str = "") -> str | None:
    """For an expected error (see :func:`user_message`): append the traceback being handled to the
    run's log (if given and its directory exists), print the one paragraph (after ``prefix``) to
    stderr and return it; else None."""
    message = user_message(err)
    if message is None:
        return None
    if log_file is not None and log_file.parent.is_dir():
        with log_file.open("a") as f:
            f.write(traceback.format_exc())
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
    return message


@contextmanager
def exit_on_error(
    prefix: str = "", log_file: Path | None = None, output_dir: str | Path | None = None, code: int = 1
) -> Iterator[None]:
    """The one error path of every entry point: run the block; an expected error is one paragraph on
    stderr (after ``prefix``), its traceback appended to ``log_file``, and exit status ``code``.

    Ctrl-C outside a run's own handlers exits 130 with one line. Anything else is a bug and raises
    with its traceback, except in a Hydra multirun given ``output_dir``: there every failure is
    recorded in the job's ``job_status.json`` (:func:`finish`) and the sweep goes on, so the block's
    caller must not assume the block completed.
    """
    try:
        yield
    except KeyboardInterrupt:
        print(f"{prefix}interrupted (Ctrl-C); files written so far are complete", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - expected errors get one paragraph; others re-raise
        message = report_expected(err, log_file, prefix)
        if message is None:
            if output_dir is None or not in_multirun():
                raise
            traceback.print_exc()  # a bug: its traceback, and the sweep goes on with the next job
            message = f"{type(err).__name__}: {err}"
        status = getattr(err, "exit_code", code)  # an error that names its own status: a failed gate, 4
        if output_dir is None:
            sys.exit(status)
        finish(output_dir, status, message)


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``)."""
    if "hydra" not in sys.modules:  # not under Hydra at all (a worker, argparse entry points)
        return False
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def finish(output_dir: str | Path, code: int, message: str, status: str = "failed") -> None:
    """Exit with status ``code``; in a multirun, write ``job_status.json`` (``status``: failed,
    interrupted or requeued) into the job's directory and return instead, so that Hydra goes on
    with the next job and the sweep report lists this one."""
    if not in_multirun():
        sys.exit(code)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / JOB_STATUS).write_text(json.dumps({"status": status, "exit_code": code, "error": message}))
