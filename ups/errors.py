"""Expected errors, as the user sees them: one paragraph on stderr, the traceback in the run's log.

Shared by the command line (``ups/train.py``) and each rank of a launched job, so a data error on
rank 1 reads the same as one in a single process.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

JOB_STATUS = "job_status.json"  # a multirun job's outcome, read by the sweep report (ups/sweeps/report.py)

# The exit status of a launched rank that stopped on an expected error and printed its paragraph, so
# the launcher does not repeat it as a crash with torch's failure report.
EXPECTED_EXIT = 3


def user_message(err: BaseException) -> str | None:
    """``"<kind>: <message>"`` for an error the user can act on; None for anything else (a bug, whose
    traceback is the useful part)."""
    from ups.config import ConfigError
    from ups.data.readers import DataFileError
    from ups.training.checkpoint import CheckpointError
    from ups.training.failures import StopTraining

    kinds = ((ConfigError, "Config error"), (CheckpointError, "Checkpoint error"), (StopTraining, "Training stopped"),
             (DataFileError, "Data error"), (FileNotFoundError, "Data error"), (OSError, "I/O error"))
    return next((f"{kind}: {err}" for cls, kind in kinds if isinstance(err, cls)), None)


def report_expected(err: BaseException, log_file: Path, prefix: str = "") -> str | None:
    """For an expected error (see :func:`user_message`): append the traceback being handled to the
    run's log, print the one paragraph (after ``prefix``) to stderr and return it; else None."""
    message = user_message(err)
    if message is None:
        return None
    if log_file.parent.is_dir():
        with log_file.open("a") as f:
            f.write(traceback.format_exc())
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
    return message


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``)."""
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
