"""Objectives: what a stage optimises and how its model predicts the next frame.

A stage names its objective by ``_target_`` (``conf/stage/*.yaml``); the trainer calls
:meth:`Objective.loss` and evaluation calls :meth:`Objective.predict`, so neither knows the loss.
"""

from typing import Any

from ups.objectives.base import Objective
from ups.objectives.next_step import NextStep
from ups.objectives.unrolled import Unrolled

__all__ = ["NextStep", "Objective", "Unrolled", "build_objective"]


def build_objective(cfg: Any, where: str) -> Objective:
    """Instantiate a stage's objective; a bad target or argument is a config error naming ``where``."""
    from hydra.utils import instantiate

    from ups.config import ConfigError

    try:
        objective = instantiate(cfg)
    except Exception as err:  # Hydra wraps import and argument errors alike
        raise ConfigError(f"{where}.objective cannot be built: {err}") from None
    if not isinstance(objective, Objective):
        raise ConfigError(f"{where}.objective={cfg.get('_target_')} is not an ups.objectives.Objective")
    return objective
