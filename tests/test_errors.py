"""The one error path: error classes in ups/errors.py and the helper every entry point runs inside."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ups import errors
from ups.errors import CheckpointError, ConfigError, DataFileError, StopTraining, exit_on_error

UPS = Path(__file__).resolve().parents[1] / "ups"


def test_expected_error_is_one_paragraph_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log_file = tmp_path / "train.log"
    with pytest.raises(SystemExit) as stop, exit_on_error("Cannot do it: ", log_file):
        raise DataFileError("x.hdf5 is missing")
    assert stop.value.code == 1
    assert capsys.readouterr().err == "Cannot do it: Data error: x.hdf5 is missing\n"
    assert "Traceback" in log_file.read_text() and "x.hdf5 is missing" in log_file.read_text()


@pytest.mark.parametrize(
    "err, kind",
    [
        (ConfigError("a"), "Config error"),
        (CheckpointError("a"), "Checkpoint error"),
        (StopTraining("a"), "Training stopped"),
        (FileNotFoundError("a"), "Data error"),
        (OSError("a"), "I/O error"),
    ],
)
def test_every_kind_is_named(err: Exception, kind: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop, exit_on_error(code=3):
        raise err
    assert stop.value.code == 3 and capsys.readouterr().err == f"{kind}: a\n"


def test_a_bug_keeps_its_traceback() -> None:
    with pytest.raises(KeyError), exit_on_error(output_dir="/nonexistent"):
        raise KeyError("bug")


def test_ctrl_c_is_one_line_and_130(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop, exit_on_error("evaluate: "):
        raise KeyboardInterrupt
    assert stop.value.code == 130 and capsys.readouterr().err.startswith("evaluate: interrupted")


def test_in_a_multirun_the_job_records_its_failure_and_the_sweep_goes_on(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(errors, "in_multirun", lambda: True)
    for err in (ConfigError("bad lr"), KeyError("bug")):  # expected errors and bugs alike
        with exit_on_error(output_dir=tmp_path):
            raise err
        status = json.loads((tmp_path / errors.JOB_STATUS).read_text())
        assert status["status"] == "failed" and status["exit_code"] == 1 and str(err).strip("'") in status["error"]


def test_old_homes_still_export_the_classes() -> None:
    from ups.config import ConfigError as FromConfig
    from ups.data.readers import DataFileError as FromReaders
    from ups.training.checkpoint import CheckpointError as FromCheckpoint
    from ups.training.failures import StopTraining as FromFailures

    assert (FromConfig, FromReaders, FromCheckpoint, FromFailures) == (
        ConfigError,
        DataFileError,
        CheckpointError,
        StopTraining,
    )


def test_errors_module_imports_neither_hydra_nor_torch() -> None:
    code = "import sys, ups.errors; print(sorted(m for m in ('hydra', 'torch', 'omegaconf') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _entry_points() -> list[Path]:
    main = re.compile(r"^(@hydra\.main|if __name__ == .__main__.:)", re.M)
    return sorted(p for p in UPS.rglob("*.py") if main.search(p.read_text()))


def test_every_entry_point_uses_the_one_error_path() -> None:
    """A new ``python -m ups.*`` command must run inside exit_on_error, or its errors read differently."""
    found = _entry_points()
    assert len(found) >= 12, found  # the scan itself works: train, tune, evaluate, bench, faults, ...
    missing = [str(p.relative_to(UPS.parent)) for p in found if "exit_on_error(" not in p.read_text()]
    assert not missing, f"entry points that do not use ups.errors.exit_on_error: {missing}"
