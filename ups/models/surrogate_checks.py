"""Shape checks of the latent surrogate's inputs, one message per mistake, naming the task and the shape expected."""

from __future__ import annotations

from torch import Tensor

from ups.models.spec import TaskIO


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
