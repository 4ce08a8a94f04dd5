"""Checks of the latent surrogate's sizes and inputs, one message per mistake, naming the task and the shape expected."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ups.models.spec import TaskIO


def check_sizes(
    hidden: int, heads: int, basis: int, patch: Sequence[int], lattice: Sequence[int], bundle: Sequence[int]
) -> tuple[list[int], list[int], list[int]]:
    """The constructor's sizes, checked; returns ``patch``, ``lattice`` and ``bundle`` as lists of ints."""
    if hidden % heads != 0:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    if basis < 1:
        raise ValueError(f"basis must be >= 1, got {basis}")
    patch, lattice, bundle = [int(p) for p in patch], [int(n) for n in lattice], [int(m) for m in bundle]
    if len(patch) != 3 or len(lattice) != 3 or min(lattice) < 1:
        raise ValueError(f"patch and lattice need one positive entry per dimension 1, 2, 3; got {patch}, {lattice}")
    if len(bundle) != 3 or min(bundle) < 1:
        raise ValueError(f"bundle needs one entry >= 1 per dimension 1, 2, 3; got {bundle}")
    return patch, lattice, bundle


def check_fields(task: str, io: TaskIO, fields: Tensor, coords: Tensor) -> None:
    """``fields`` [B, P, in_channels] on the P points of ``coords`` [B or 1, P, dim]."""
    if fields.dim() != 3 or fields.shape[-1] != io.in_channels:
        raise ValueError(
            f"task {task!r}: fields must be [B, P, {io.in_channels}] (in_channels={io.in_channels}), "
            f"got shape {tuple(fields.shape)}"
        )
    check_coords(task, io, coords, "coords", fields.shape[0])
    if coords.shape[1] != fields.shape[1]:
        raise ValueError(f"task {task!r}: coords have {coords.shape[1]} points but fields have {fields.shape[1]}")


def check_coords(task: str, io: TaskIO, coords: Tensor, what: str, batch: int) -> None:
    """``coords`` [1 or batch, N, dim]."""
    if coords.dim() != 3 or coords.shape[-1] != io.dim:
        raise ValueError(
            f"task {task!r}: {what} must be [B, N, {io.dim}] (dim={io.dim}), got shape {tuple(coords.shape)}"
        )
    if coords.shape[0] not in (1, batch):
        raise ValueError(f"task {task!r}: {what} batch must be 1 or {batch}, got {coords.shape[0]}")


def check_latents(task: str, z: Tensor, tokens: int, hidden: int, shape: tuple[int, ...]) -> None:
    """``z`` [B, tokens, hidden], the task's lattice of ``shape``."""
    if z.dim() != 3 or z.shape[-1] != hidden or z.shape[1] != tokens:
        raise ValueError(
            f"task {task!r}: z must be [B, {tokens}, {hidden}] (its lattice is {shape}), got shape {tuple(z.shape)}"
        )


def check_cond(task: str, cond: Tensor, batch: int, cond_dim: int) -> None:
    """``cond`` [1 or batch, cond_dim]."""
    if cond.dim() != 2 or cond.shape[-1] != cond_dim or cond.shape[0] not in (1, batch):
        raise ValueError(
            f"task {task!r}: cond must be [{batch}, {cond_dim}] (cond_dim={cond_dim}), got shape {tuple(cond.shape)}"
        )
