"""Stages are data: a stage config names its objective, budget and which module groups stay frozen.

The model is split into named groups here, so a stage can freeze ``encoder`` (and later read
latents from the cache) without knowing the model's internals.
"""
from __future__ import annotations

from torch import nn

GROUPS = ("encoder", "operator", "decoder")


def module_groups(model: nn.Module) -> dict[str, nn.Module]:
    """The model's ``encoder``, ``operator`` and ``decoder`` parameter groups as modules."""
    return {"encoder": nn.ModuleList(model.encoder_modules), "operator": model.operator,
            "decoder": nn.ModuleList(model.decoder_modules)}
