"""The one place that wraps a model for speed and parallelism.

Order matters and is fixed: activation checkpointing wraps blocks first (so compile sees the
checkpointed graph), then torch.compile, then the data-parallel wrapper.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ups.distributed.env import DistEnv


class _Checkpointed(nn.Module):
    """Recompute a block's activations in backward instead of storing them."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return checkpoint(self.block, *args, use_reentrant=False, **kwargs)


def apply_ac(model: nn.Module) -> None:
    """Wrap every operator block in activation checkpointing, in place."""
    blocks = model.operator.blocks
    for i, block in enumerate(blocks):
        blocks[i] = _Checkpointed(block)


def apply_compile(model: nn.Module) -> None:
    """Compile each operator block separately: small graphs compile fast and are reused across blocks."""
    blocks = model.operator.blocks
    for i, block in enumerate(blocks):
        blocks[i] = torch.compile(block)


def parallelize(model: nn.Module, cfg: Any, env: DistEnv, device: torch.device) -> nn.Module:
    """Apply AC, compile and data parallelism as the config asks; returns the module to train."""
    hw = cfg.hardware
    if hw.activation_checkpointing:
        apply_ac(model)
    if hw.compile:
        apply_compile(model)
    if env.distributed:
        raise NotImplementedError("multi-rank training comes with the parallelism options (ddpN, fsdp2)")
    return model
