"""Which parameters a stage trains: the one rule, used by the trainer and by the bench that measures it."""

from __future__ import annotations

from typing import Any

from torch import nn

from ups.errors import ConfigError
from ups.models.spec import spec_of
from ups.objectives import Objective
from ups.training.optim import set_requires_grad


def freeze_for_stage(model: nn.Module, name: str, stage: Any, objective: Objective) -> list[str]:
    """Freeze the stage's ``freeze`` groups and every stage head (a head trains only in its own
    stage), or, for an objective that trains a head of its own, everything but that head.

    ``model`` is the unwrapped model; the groups come from its spec. Returns the frozen groups' names.
    """
    spec = spec_of(model)
    groups = spec.groups(model)
    heads = set(spec.stage_heads(model)) if spec.stage_heads else set()
    own = objective.head
    if own is not None and stage.freeze:
        raise ConfigError(
            f"stages.{name}.freeze={list(stage.freeze)}: its objective trains only the "
            f"head {own!r} and every other group stays frozen; leave freeze empty"
        )
    unknown = set(stage.freeze) - set(groups)
    if unknown:
        raise ConfigError(
            f"stages.{name}.freeze has {sorted(unknown)}; model family {spec.name!r} has the groups {', '.join(groups)}"
        )
    frozen = sorted(set(groups) - {own} if own is not None else set(stage.freeze) | heads)
    set_requires_grad([model], True)
    set_requires_grad([groups[g] for g in frozen], False)
    return frozen
