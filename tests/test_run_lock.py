"""One run per output directory: a live holder refuses a second run, a dead one is taken over."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ups.config import ConfigError
from ups.training.run_lock import LOCK, acquire, release


def _lock_of(pid: int, run_dir: Path, host: str | None = None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "started": "earlier"}))
    return path


def test_a_live_holder_refuses_and_a_dead_one_is_taken_over(tmp_path: Path, caplog) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock_of(sleeper.pid, tmp_path / "busy")
        with pytest.raises(ConfigError, match=f"another run is using .*pid {sleeper.pid} on this host"):
            acquire(tmp_path / "busy")
    finally:
        sleeper.kill()
        sleeper.wait()
    # The same pid is now dead: its lock is stale.
    with caplog.at_level(logging.WARNING, logger="ups.training.run_lock"):
        path = acquire(tmp_path / "busy")
    assert "taking over" in caplog.text and json.loads(path.read_text())["pid"] != sleeper.pid
    release(path)
    assert not path.exists()
    _lock_of(1, tmp_path / "remote", host="another-host")
    with pytest.raises(ConfigError, match="on host another-host"):
        acquire(tmp_path / "remote")


def test_a_second_run_in_the_same_directory_is_refused_in_one_paragraph(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock_of(sleeper.pid, tmp_path / "run")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "ups.train",
                f"paths.output_dir={tmp_path / 'run'}",
                f"paths.data_dir={tmp_path / 'data'}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )  # Hydra's own outputs/ lands here, not in the repository
    finally:
        sleeper.kill()
        sleeper.wait()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Config error: another run is using" in proc.stderr and not (tmp_path / "data").exists()
