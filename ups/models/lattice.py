"""Where latent tokens live: a regular lattice of cells over [-1, 1]^d, sized from each task's grid.

Each token owns one cell. A point (of the input or a query) belongs to the cell that contains its
coordinates, whatever grid it came from, so the encoder pools points into tokens and the decoder
reads a token back at any coordinate; nothing depends on the points forming a grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def token_shape(
    dim: int, grid: Sequence[int], patch: Sequence[int], lattice: Sequence[int], channels: int = 1
) -> tuple[int, ...]:
    """Cells per axis for a task: its grid divided by the patch of its dimension (at least 1 cell,
    rounded so each cell holds a whole number of grid points where the grid allows); ``lattice`` of
    its dimension where the grid is unknown (a bare point set). ``channels`` > 1 shrinks the patch to
    ``patch / channels ** (1 / dim)`` per axis, so a cell holds about as many values as one of a
    one-channel task (a token's width is the same for every task)."""
    p = int(patch[dim - 1])
    if p < 1:
        raise ValueError(f"patch must be >= 1 for every dimension, got {list(patch)}")
    if not grid:
        return (int(lattice[dim - 1]),) * dim
    p = max(1.0, p / max(1, int(channels)) ** (1.0 / dim))
    return tuple(max(1, _divisor_near(int(n), p)) for n in grid)


def task_token_shape(
    io: Any, patch: Sequence[int], lattice: Sequence[int], channel_cells: bool = False
) -> tuple[int, ...]:
    """:func:`token_shape` of a task's sizes (``dim``, ``grid``, ``out_channels``: a TaskIO), its channels
    counted with ``channel_cells``: what the model builds and the dry run's estimate reads."""
    return token_shape(io.dim, io.grid, patch, lattice, io.out_channels if channel_cells else 1)


def _divisor_near(n: int, patch: float) -> int:
    """``n // p`` for the divisor ``p`` of ``n`` closest to ``patch`` (ties: the larger cell count)."""
    best = min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - patch), d))
    return n // best


def locate(coords: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """coords [b, P, d] in [-1, 1] -> (cell index [b, P] in C order, offset [b, P, d] in [-1, 1]
    from the cell's centre to its faces). Points on the upper boundary belong to the last cell."""
    n = torch.tensor(shape, device=coords.device, dtype=torch.float32)
    u = (coords.float() + 1.0) * 0.5 * n  # in cell units, [0, n]
    cell = u.floor().clamp(min=torch.zeros_like(n), max=n - 1)
    offset = 2.0 * (u - cell) - 1.0
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]
    index = (cell.long() * torch.tensor(strides, device=coords.device)).sum(-1)
    return index, offset


def centres(shape: tuple[int, ...], device: torch.device | None = None) -> Tensor:
    """[L, d] cell centres in [-1, 1], in the C order of :func:`locate`'s index."""
    axes = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n * 2.0 - 1.0 for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))


def pool(values: Tensor, index: Tensor, cells: int) -> Tensor:
    """Mean of values [B, P, H] per cell (index [b, P], b in {1, B}) -> [B, cells, H]; empty cells are 0."""
    b, p, h = values.shape
    index = index.expand(b, p)
    out = values.new_zeros(b, cells, h).scatter_add_(1, index.unsqueeze(-1).expand(b, p, h), values)
    count = values.new_zeros(b, cells).scatter_add_(1, index, values.new_ones(b, p))
    return out / count.clamp_min(1.0).unsqueeze(-1)


def gather(tokens: Tensor, index: Tensor) -> Tensor:
    """tokens [B, L, H], index [b, Q] -> the token of each query's cell, [B, Q, H]."""
    b, q = tokens.shape[0], index.shape[1]
    return tokens.gather(1, index.expand(b, q).unsqueeze(-1).expand(b, q, tokens.shape[-1]))


def cell_blocks(grid: Sequence[int], shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """Grid points per cell and axis when a grid of ``grid`` points splits into whole blocks of the
    lattice ``shape`` (then :func:`to_cells` is a reshape); None otherwise."""
    if len(grid) != len(shape) or any(g % n for g, n in zip(grid, shape)):
        return None
    return tuple(g // n for g, n in zip(grid, shape))


def to_cells(x: Tensor, shape: tuple[int, ...], block: tuple[int, ...]) -> Tensor:
    """Values at a grid's points in C order, [B, P, F], -> per cell [B, L, m, F] (m points per cell, in
    C order within the cell): what :func:`pool` and :func:`gather` do for such a grid, as a reshape
    instead of a scatter, many times cheaper."""
    b, f, d = x.shape[0], x.shape[-1], len(shape)
    split = [s for n, p in zip(shape, block) for s in (n, p)]
    order = [0, *range(1, 2 * d, 2), *range(2, 2 * d + 1, 2), 2 * d + 1]
    return x.reshape(b, *split, f).permute(order).reshape(b, -1, _prod(block), f)


def from_cells(x: Tensor, shape: tuple[int, ...], block: tuple[int, ...]) -> Tensor:
    """The inverse of :func:`to_cells`: [B, L, m, F] -> [B, P, F] in the grid's C order."""
    b, f, d = x.shape[0], x.shape[-1], len(shape)
    order = [0] + [i for a in range(d) for i in (1 + a, 1 + d + a)] + [2 * d + 1]
    return x.reshape(b, *shape, *block, f).permute(order).reshape(b, -1, f)


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


class GridLayouts:
    """Remembers, per (task, grid), whether a grid's points in C order fall in whole cells of the task's
    lattice, so encoding and decoding can reshape instead of scatter and gather (same values, several
    times faster). The cell of every point is checked against its block once per task and grid."""

    def __init__(self) -> None:
        self._known: dict[tuple, bool] = {}

    def blocks(
        self, task: str, shape: tuple[int, ...], coords: Tensor, grid: Sequence[int] | None
    ) -> tuple[int, ...] | None:
        """Grid points per cell and axis when ``coords`` [1, P, d] are the points of ``grid`` in C order and
        each cell of ``shape`` holds a whole block of them; None otherwise."""
        if not grid or coords.shape[0] != 1 or _prod(grid) != coords.shape[1]:
            return None
        grid = tuple(int(g) for g in grid)
        block = cell_blocks(grid, shape)
        if block is None:
            return None
        key = (task, grid)
        if key not in self._known:
            cells = torch.arange(_prod(shape), device=coords.device)
            expected = from_cells(cells.view(1, -1, 1, 1).expand(1, -1, _prod(block), 1), shape, block)
            self._known[key] = bool(torch.equal(locate(coords, shape)[0], expected.view(1, -1)))
        return block if self._known[key] else None
