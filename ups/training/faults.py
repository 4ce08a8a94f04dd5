"""Injected failures (``faults.*`` in the config), so tests can prove the trainer survives them.

Each fault fires once, at optimizer step ``k`` (the step that would make ``trainer.step == k``) on
one rank; a crash fires only on the first attempt so the restarted job can finish.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ups.distributed.env import DistEnv

log = logging.getLogger(__name__)


class FaultInjector:
    """Checks the configured faults at fixed points of a training step."""

    def __init__(self, cfg: Any, env: DistEnv):
        self.cfg, self.env = cfg, env
        self.fired: set[str] = set()

    def _due(self, name: str, step: int) -> bool:
        rank, at = getattr(self.cfg, f"{name}_rank"), getattr(self.cfg, f"{name}_step")
        if at is None or rank != self.env.rank or step != at or name in self.fired:
            return False
        self.fired.add(name)
        log.warning("injecting fault %s on rank %d at step %d", name, self.env.rank, step)
        return True

    def before_forward(self, step: int) -> None:
        """Raise an out-of-memory error, as a too-large batch would in forward."""
        if self._due("oom", step):
            raise torch.OutOfMemoryError(f"injected out-of-memory error on rank {self.env.rank} at step {step}")

    def corrupt_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        """Make the loss NaN, as a diverging batch would."""
        return loss * float("nan") if self._due("nan", step) else loss

    def after_step(self, step: int) -> None:
        """Kill this process without cleanup, as a node failure would."""
        if self.env.restart_count == 0 and self._due("crash", step):
            os._exit(1)
