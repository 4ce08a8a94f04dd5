"""One run per output directory at a time: a lock file holding the host and PID of its holder.

Two runs writing one directory would interleave checkpoint saves and crash on each other's
temporary folders. The lock is ``<run_dir>/.run.lock``, created atomically; a second run refuses
with a message naming the holder. A lock whose holder is gone (a dead PID on this host, e.g. after
kill -9) is taken over with a warning; one from another host cannot be checked and is refused
unless the user removes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from ups.errors import ConfigError

log = logging.getLogger(__name__)
LOCK = ".run.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # removed meanwhile, or a write cut short: treated as stale


def acquire(run_dir: str | Path) -> Path:
    """Take the run directory's lock or raise ConfigError naming the run that holds it."""
    path = Path(run_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _holder(path)
            if other is not None and other.get("pid") == me["pid"] and other.get("host") == me["host"]:
                return path  # this process already holds it
            if other is not None and (other.get("host") != me["host"] or _alive(int(other.get("pid", -1)))):
                where = "on this host" if other.get("host") == me["host"] else f"on host {other.get('host')}"
                raise ConfigError(
                    f"another run is using {path.parent} (pid {other.get('pid')} {where}, started "
                    f"{other.get('started')}); two runs in one directory would mix their checkpoints. Wait for it, "
                    f"choose another paths.output_dir, or, if that run is gone, delete {path}"
                ) from None
            log.warning("taking over the lock of a run that is gone: %s", other or "unreadable lock file")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise ConfigError(f"could not take the lock {path}: other processes keep taking it")


def release(path: Path) -> None:
    """Remove the lock if this process holds it."""
    other = _holder(path)
    if other is not None and other.get("pid") == os.getpid() and other.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def run_lock(run_dir: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold the run directory's lock for the block (a no-op when not ``enabled``, e.g. on ranks other than 0)."""
    if not enabled:
        yield
        return
    path = acquire(run_dir)
    try:
        yield
    finally:
        release(path)
