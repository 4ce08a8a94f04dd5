"""Objectives: what a stage optimises and how its model predicts the next frame.

A stage names its objective by ``_target_`` (``conf/stage/*.yaml``); the trainer calls
:meth:`Objective.loss` and evaluation calls :meth:`Objective.predict`, so neither knows the loss.
"""

from typing import Any, Mapping

from ups.objectives.base import Objective
from ups.objectives.consistency import ConsistencyCorrection
from ups.objectives.diffusion import DiffusionResidual
from ups.objectives.inverse import Autoencoder, InverseConsistency
from ups.objectives.next_step import NextStep
from ups.objectives.steady import SteadyPrior
from ups.objectives.unrolled import Unrolled

__all__ = [
    "Autoencoder",
    "ConsistencyCorrection",
    "DiffusionResidual",
    "InverseConsistency",
    "NextStep",
    "Objective",
    "SteadyPrior",
    "Unrolled",
    "attach_heads",
    "bind_bundle",
    "build_objective",
]


def build_objective(cfg: Any, where: str) -> Objective:
    """Instantiate a stage's objective; a bad target or argument is a config error naming ``where``."""
    from hydra.utils import instantiate

    from ups.errors import ConfigError

    try:
        objective = instantiate(cfg)
    except Exception as err:  # Hydra wraps import and argument errors alike
        raise ConfigError(f"{where}.objective cannot be built: {err}") from None
    if not isinstance(objective, Objective):
        raise ConfigError(f"{where}.objective={cfg.get('_target_')} is not an ups.objectives.Objective")
    return objective


def check_frozen_start(stages: Any) -> None:
    """Training's first stage may not keep a random encoder fixed: with no earlier stage to train it and
    no ``init_from`` to load it, every number would come from random latents. (Only training: the
    benchmarks time a frozen encoder on random weights on purpose.)"""
    from ups.errors import ConfigError

    name, stage = next(((n, s) for n, s in stages.items() if s.get("steps") != 0), (None, None))
    if stage is not None and "encoder" in (stage.get("freeze") or []) and not stage.get("init_from"):
        raise ConfigError(
            f"stages.{name} freezes the encoder but nothing trained it: it is the first stage that "
            f"trains and has no init_from. Set stages.{name}.init_from=<run>/checkpoints/<stage>/final "
            "(a checkpoint holding a trained encoder), or train it in an earlier stage "
            "(stage=pretrain_finetune or stage=autoencoder_pretrain)"
        )


def attach_heads(model: Any, objectives: Mapping[str, Objective]) -> None:
    """Attach every stage objective's own network to the unwrapped model, in stage order, so that
    checkpoints, wrapping and freezing see one model from the first stage on. A head on a model
    family without a latent space is a config error naming the stage. ``objectives``: by stage name,
    as ``ups.build.build_objectives`` builds them."""
    from ups.errors import ConfigError
    from ups.models.spec import spec_of

    for name, objective in objectives.items():
        if objective.head is None:
            continue
        spec = spec_of(model)
        if spec.stage_heads is None:
            raise ConfigError(
                f"stages.{name}: {type(objective).__name__} trains a network on a latent model's "
                f"tokens; model family {spec.name!r} has no latent space (use a latent model, "
                "e.g. model=tiny, or leave the stage out)"
            )
        heads = spec.stage_heads(model)
        if objective.head in heads:
            raise ConfigError(f"stages.{name}: another stage already attaches a head named {objective.head!r}")
        try:
            heads[objective.head] = objective.build_head(model)
        except ValueError as err:
            raise ConfigError(f"stages.{name}.objective: {err}") from None


def bind_bundle(model: Any, objectives: Mapping[str, Objective]) -> None:
    """Size every objective's training windows for a model that predicts several frames per call
    (a latent model's ``bundle``): its ``horizon`` becomes those frames by task. An objective that
    cannot train such a model is refused, naming the stage. A one-frame model changes nothing."""
    from ups.errors import ConfigError
    from ups.objectives.next_step import frames_per_call

    frames = frames_per_call(model)
    if not frames:
        return
    for name, objective in objectives.items():
        if not objective.bundles:
            raise ConfigError(
                f"stages.{name}: {type(objective).__name__} trains on one predicted frame per call, but the "
                f"model predicts several (model.bundle, by task: {frames}); use a one-frame model with this stage "
                "(model.bundle=[1,1,1], e.g. model=tiny), or train the bundled model "
                "with the operator stage alone (stage=operator)"
            )
        objective.horizon = dict(frames)
