"""Reductions that every rank calls together; in a single process they are the identity.

Decisions that change control flow (skip a step, stop training) must go through :func:`any_rank`
so that all ranks take the same branch; a rank-local branch would mispair later collectives.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_rank(*flags: bool, device: torch.device | None = None) -> bool | tuple[bool, ...]:
    """For each flag, True on every rank if it is true on at least one (one all-reduce for all)."""
    if not _active():
        out = tuple(bool(f) for f in flags)
    else:
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        out = tuple(bool(v > 0) for v in t.tolist())
    return out[0] if len(out) == 1 else out


_host_groups: dict[int, object] = {}


def _host_group():
    """A gloo group beside an NCCL default group (created on first use, by every rank at once)."""
    if dist.get_backend() in ("gloo", "fake"):
        return None  # the default group already works on host tensors
    key = id(dist.group.WORLD)
    if key not in _host_groups:
        _host_groups[key] = dist.new_group(backend="gloo")
    return _host_groups[key]


def any_rank_on_host(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on one, agreed over host memory: for a decision the host
    already knows (an exception it caught), so that asking the other ranks never waits for the GPU."""
    if not _active():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_host_group())
    return bool(t.item() > 0)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor; the input is unchanged)."""
    out = values.detach().clone()
    if _active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of a tensor over ranks (returns a new tensor)."""
    out = values.detach().clone()
    if _active():
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def barrier() -> None:
    if _active():
        dist.barrier()


@contextlib.contextmanager
def main_first(is_main: bool) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writing data or statistics files), then the others read."""
    if not is_main:
        barrier()
    yield
    if is_main:
        barrier()
