"""Injected failures (``faults.*`` in the config), so tests can prove the trainer survives them.

A callback the runner adds only when a fault is configured, so the training loop itself holds no
fault code: it reaches the loop through the generic hooks every callback has. Each fault fires
once, at optimizer step ``k`` (the step that would make ``trainer.step == k``) on one rank; a crash
fires only on the first attempt so the restarted job can finish.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import torch

from ups.training.callbacks import Callback

if TYPE_CHECKING:
    from ups.training.trainer import Trainer

log = logging.getLogger(__name__)

KINDS = ("oom", "nan", "crash")


def any_fault(cfg: Any) -> bool:
    """Whether the ``faults`` config asks for any injected failure."""
    return any(getattr(cfg, f"{kind}_step") is not None for kind in KINDS)


class FaultInjection(Callback):
    """Out-of-memory in forward, a NaN loss, or a crash after a step, on one rank at one step."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.fired: set[str] = set()  # per process: a restarted job starts with none fired

    def _due(self, name: str, trainer: "Trainer", step: int) -> bool:
        rank, at = getattr(self.cfg, f"{name}_rank"), getattr(self.cfg, f"{name}_step")
        if at is None or rank != trainer.env.rank or step != at or name in self.fired:
            return False
        self.fired.add(name)
        log.warning("injecting fault %s on rank %d at step %d", name, trainer.env.rank, step)
        return True

    def on_before_forward(self, trainer: "Trainer") -> None:
        """Raise an out-of-memory error, as a too-large batch would in forward."""
        step = trainer.global_step + 1  # the step being computed
        if self._due("oom", trainer, step):
            raise torch.OutOfMemoryError(f"injected out-of-memory error on rank {trainer.env.rank} at step {step}")

    def on_before_backward(self, trainer: "Trainer", loss: torch.Tensor) -> torch.Tensor:
        """Make the loss NaN, as a diverging batch would."""
        return loss * float("nan") if self._due("nan", trainer, trainer.global_step + 1) else loss

    def on_step_complete(self, trainer: "Trainer") -> None:
        """Kill this process without cleanup, as a node failure would (after the step's checkpoint, if any)."""
        if trainer.env.restart_count == 0 and self._due("crash", trainer, trainer.global_step):
            os._exit(1)
