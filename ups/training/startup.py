"""Time from the command to the first optimizer step, split into its parts, logged once per run.

The clock of a process's first run starts when the process did (Linux ``/proc``), so Python's start,
the imports and Hydra's composition count as "config"; elsewhere it starts when this module was
imported. A later run in the same process (the next job of a local sweep, a test) starts its clock
when it starts: counting from the process start would include the jobs before it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from ups.training.callbacks import Callback

if TYPE_CHECKING:
    from ups.training.trainer import Trainer

log = logging.getLogger(__name__)
_IMPORTED = time.monotonic()


def process_age_s() -> float:
    """Seconds since this process started (since this module's import where /proc is missing)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


class Startup:
    """Marks on one clock: each :meth:`mark` closes the part that began at the previous mark."""

    _runs = 0  # runs started in this process

    def __init__(self) -> None:
        self.parts = {"config": process_age_s() if Startup._runs == 0 else 0.0}
        Startup._runs += 1
        self._last = time.perf_counter()

    def mark(self, part: str) -> None:
        now = time.perf_counter()
        self.parts[part] = self.parts.get(part, 0.0) + now - self._last
        self._last = now


class StartupReport(Callback):
    """Logs the start-up split at the first optimizer step of a run: config (process start to the
    run), data (open, statistics, generation), model (build), parallelize (wrapping, compile set-up),
    and the first step (the first batch, and compilation when on)."""

    def __init__(self, startup: Startup):
        self.startup, self.done = startup, False

    def on_step_end(self, trainer: "Trainer") -> None:
        if self.done:
            return
        self.done = True
        self.startup.mark("first_step")
        parts = {k: round(v, 2) for k, v in self.startup.parts.items()}
        total = round(sum(self.startup.parts.values()), 2)
        log.info(
            "start-up: first optimizer step %.1f s after the command (%s)",
            total,
            ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()),
        )
        trainer.log_record(
            {
                "step": trainer.global_step,
                "kind": "startup",
                "stage": trainer.stage_name,
                "seconds": total,
                **{f"{k}_s": v for k, v in parts.items()},
            }
        )
