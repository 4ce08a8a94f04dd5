"""The local-field decoder: field values at arbitrary coordinates from the token of their cell."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ups.models import lattice
from ups.models.layers import SelfAttentionBlock


class LocalFieldDecoder(nn.Module):
    """Each token becomes the coefficients of a small field over its own cell.

    A query reads the token of the cell it falls in: ``value(q) = sum_k coef[c, k] * basis_k(offset)``,
    where ``offset`` is the query's place inside the cell and ``basis`` a learned function of it.
    (Blending the 2^d surrounding cells with tent weights, for a field continuous across cell
    faces, was tried and did no better: docs/results.md.)
    Queries never interact, so any point set (finer grid, random points, a subset) can be decoded,
    and with as many basis functions as grid points per cell a token can reproduce its patch exactly.
    The shared part (optional self-attention) is here; the per-task coefficient heads and
    bases live in the surrogate's ModuleDicts.
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, layers: int = 0):
        super().__init__()
        if layers < 0:
            raise ValueError(f"decoder_layers must be >= 0, got {layers}")
        self.blocks = nn.ModuleList(SelfAttentionBlock(hidden, heads, mlp_ratio, dropout) for _ in range(layers))
        # No LayerNorm before the heads: the coefficients must scale with the token (see the encoder).

    def forward(
        self,
        z: Tensor,
        coef_head: nn.Module,
        basis: nn.Module,
        features: Callable[[Tensor], Tensor],
        cells: tuple[Tensor, Tensor],
        channels: int,
        blocks: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    ) -> Tensor:
        """z [B, L, hidden] -> [B, Q, channels] at queries in ``cells`` = (cell index [b, Q], offset in the
        cell [b, Q, d]) (:func:`ups.models.lattice.locate`); ``basis(features(offset))`` gives the K cell
        functions at an offset. ``blocks`` = (lattice shape, points per cell and axis) when the queries
        are a grid's points in C order that split into whole cells: the same values, computed per cell
        with a reshape instead of a gather (:func:`ups.models.lattice.to_cells`)."""
        for layer in self.blocks:
            z = layer(z)
        index, offset = cells
        phi = basis(features(offset))  # [b, Q, K]
        k = phi.shape[-1]
        coef = coef_head(z).unflatten(-1, (channels, k + 1))  # [B, L, channels, K + 1]: basis weights and a bias
        if blocks is not None:
            shape, block = blocks
            per_cell = torch.einsum(
                "blck,lmk->blmc", coef[..., :k], lattice.to_cells(phi, shape, block)[0].to(coef.dtype)
            )
            return lattice.from_cells(per_cell + coef[..., k].unsqueeze(2), shape, block)
        per_query = lattice.gather(coef.flatten(-2), index).unflatten(-1, (channels, k + 1))
        return (per_query[..., :k] * phi.unsqueeze(-2).to(per_query.dtype)).sum(-1) + per_query[..., k]
