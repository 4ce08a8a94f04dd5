"""Reductions that every rank calls together; in a single process they are the identity.

Decisions that change control flow (skip a step, stop training) must go through :func:`any_rank`
so that all ranks take the same branch; a rank-local branch would mispair later collectives.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank if ``flag`` is true on at least one."""
    if not _active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor; the input is unchanged)."""
    out = values.detach().clone()
    if _active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
