"""The trainer's counters in one place: where a stage is, how its epoch is going, why it stopped.

A field is checkpointed and restored by default (:meth:`TrainerState.state_dict`,
:meth:`TrainerState.load_state_dict` walk the fields), so a new counter survives a resume without a
second edit. A field that must not be restored says why in its metadata: ``RECORDED`` ones are saved
for reading but set by the config on resume, ``PROCESS`` ones belong to this process alone.
``tests/test_trainer_state.py`` fails when a field round-trips neither way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any

# The value of a field's metadata["checkpoint"]; absent means saved and restored.
RECORDED = "recorded"  # saved for the run-directory checks and readers, not restored: the config decides it
PROCESS = "process"  # never saved: a clock, a signal or a request of this process only


def _recorded(default: Any) -> Any:
    return field(default=default, metadata={"checkpoint": RECORDED})


def _process(default: Any) -> Any:
    return field(default=default, metadata={"checkpoint": PROCESS})


@dataclass
class TrainerState:
    """Counters of the trainer. ``step``, ``epoch`` and ``batches_done`` count within the current
    stage; ``offset`` is the global step at the stage's start; ``train_seconds`` spans the run."""

    step: int = 0  # optimizer steps of this stage that counted (skipped ones do not)
    offset: int = 0
    epoch: int = 0
    batches_done: int = 0  # micro-batches of the current epoch consumed (the sampler's resume point)
    skipped_steps: int = 0
    epoch_losses: list[float] = field(default_factory=list)  # mean train loss of each finished epoch
    epoch_sum: float = 0.0  # losses of the current epoch's steps so far: a resumed epoch's mean covers all of it
    epoch_n: int = 0
    last_val: dict = field(default_factory=dict)  # the stage's latest validation record
    train_seconds: float = 0.0  # training wall-clock of the finished parts, across resumes (time_budget_s)
    stopped: str | None = None  # why the stage stopped early on purpose; a finished stage is then not continued
    stage: str = _recorded("")
    total_steps: int = _recorded(0)  # the stage's budget: a raised budget continues a finished stage
    consecutive_skips: int = _process(0)  # skipped steps since the last that counted (max_consecutive_skips)
    last_loss: float = _process(float("nan"))  # the latest step's loss, for the progress display
    stop_reason: str | None = _process(None)  # this rank's request to stop, before the ranks agree
    interrupted: int = _process(0)  # the stop signal every rank agreed on, if any
    t0: float | None = _process(None)  # when this process started training the current stage

    @property
    def global_step(self) -> int:
        """Optimizer steps done over all stages so far."""
        return self.offset + self.step

    def next_stage(self, name: str, total_steps: int) -> "TrainerState":
        """The state at the start of stage ``name``: its counters from zero, the run's carried over."""
        return TrainerState(
            offset=self.global_step,
            stage=name,
            total_steps=total_steps,
            train_seconds=self.train_seconds,
            consecutive_skips=self.consecutive_skips,
            last_loss=self.last_loss,
            interrupted=self.interrupted,
        )

    # -- the clock ------------------------------------------------------------------------------
    def start_clock(self) -> None:
        self.t0 = time.perf_counter()

    def elapsed_s(self) -> float:
        """Training seconds so far, the current stretch included."""
        return self.train_seconds + (time.perf_counter() - self.t0 if self.t0 is not None else 0.0)

    def stop_clock(self) -> None:
        self.train_seconds, self.t0 = self.elapsed_s(), None

    # -- steps --------------------------------------------------------------------------------
    def count_step(self, loss: float) -> None:
        """An optimizer step that counted."""
        self.step += 1
        self.consecutive_skips = 0
        self.last_loss = loss

    def count_skip(self) -> int:
        """A step skipped on every rank; returns how many in a row."""
        self.skipped_steps += 1
        self.consecutive_skips += 1
        return self.consecutive_skips

    def close_epoch_losses(self) -> None:
        """Append the mean loss of the epoch's steps (if any) and start the next sum."""
        if self.epoch_n:
            self.epoch_losses.append(self.epoch_sum / self.epoch_n)
            self.epoch_sum, self.epoch_n = 0.0, 0

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Every field but the process-only ones, JSON-safe; ``train_seconds`` includes the running stretch."""
        out = {f.name: _copy(getattr(self, f.name)) for f in fields(self) if f.metadata.get("checkpoint") != PROCESS}
        out["train_seconds"] = self.elapsed_s()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the saved fields (not the recorded ones: this run's config sets those)."""
        for f in fields(self):
            if not f.metadata.get("checkpoint"):
                setattr(self, f.name, _copy(state[f.name]))


def _copy(value: Any) -> Any:
    """Lists and dicts copied, so a saved state never aliases the live one."""
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value
