"""Small helpers for inspecting models."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in `model` (shared tensors counted once)."""
    # named_parameters() already de-duplicates tied parameters.
    return sum(p.numel() for _, p in model.named_parameters() if p.requires_grad or not trainable_only)


def parameter_breakdown(model: nn.Module) -> dict[str, int]:
    """Parameter count per direct child module, plus the total under "total"."""
    counts = {name: count_parameters(child) for name, child in model.named_children()}
    counts["total"] = count_parameters(model)
    return counts
