"""Stop cleanly on SIGTERM, SIGINT and SIGUSR2: finish the step, checkpoint, exit with 128 + signal.

A scheduler's preemption signal (SLURM's ``--signal=USR2@120``), ``kill`` and Ctrl-C only set a flag
here; the trainer agrees on it with the other ranks at the next step boundary, saves a step
checkpoint and raises :class:`Interrupted`, and the command exits with ``128 + signal`` and one line.
A second Ctrl-C exits at once, in a process of its own. Under a launcher (UPS's, torchrun) the
launcher's agent passes the terminal's Ctrl-C on to the ranks once more as it shuts down, so there a
rank keeps stopping cleanly and the launcher answers a second Ctrl-C (its ranks then exit with it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
_received: int | None = None
_second_interrupt_exits = True
_quiet = False  # ranks other than 0 do not repeat rank 0's acknowledgement
_STEP_ACK = "stopping after this step and saving a checkpoint"
_ack = _STEP_ACK  # what the acknowledgement says the run will do (the closing evaluation says otherwise)


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; ``signum`` says which."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def received() -> int | None:
    """The first stop signal this process received, or None."""
    return _received


def _handler(signum: int, frame: object) -> None:
    global _received
    if _received is not None and signum == signal.SIGINT and _second_interrupt_exits:
        print("second interrupt: exiting now, without a checkpoint", file=sys.stderr, flush=True)
        os._exit(128 + signum)
    if _received is None:
        _received = signum
        if not _quiet:
            print(
                f"received {signal.Signals(signum).name}: {_ack} (Ctrl-C again to exit at once)",
                file=sys.stderr,
                flush=True,
            )


def acknowledge_as(text: str) -> None:
    """Set what the acknowledgement of a signal says the run does next (until the handlers are restored)."""
    global _ack
    _ack = text


@contextlib.contextmanager
def stop_on_signals(under_launcher: bool = False, quiet: bool = False) -> Iterator[None]:
    """Handle the stop signals for the block (main thread only; elsewhere a no-op), then restore.

    ``under_launcher``: this process is a rank started by a launcher, which owns the second Ctrl-C.
    ``quiet``: do not print the acknowledgement (a rank other than 0).
    """
    global _received, _second_interrupt_exits, _quiet, _ack
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received, _second_interrupt_exits, _quiet, _ack = None, not under_launcher, quiet, _STEP_ACK
    previous = {s: signal.signal(s, _handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _received = None
