"""Point embeddings and the lattice encoder: fields on any point set to one latent token per cell."""

from __future__ import annotations

from torch import Tensor, nn

from ups.models.layers import SelfAttentionBlock, ZeroLinear


class PointEmbedding(nn.Module):
    """Task-specific lift of [field values, coordinate features] at each point to `hidden`.

    With `in_channels=0` it embeds coordinates only (token positions). The output layer starts at
    zero, so the embedding adds nothing at first: a model built on it starts shift-equivariant, as
    an FNO is, and learns absolute position only where the data needs it (boundaries, Darcy's
    coefficient field). Random at init it cost 0.091 -> 0.112 mean rollout on pdebench11, Burgers
    0.11 -> 0.25 (docs/results.md, stage 5).
    """

    def __init__(self, in_channels: int, coord_features: int, hidden: int):
        super().__init__()
        self.in_channels = in_channels
        # Two projections summed == one Linear on the concatenation, but a batch-1 coordinate
        # grid is then projected once and broadcast over the batch instead of B times.
        self.field_proj = nn.Linear(in_channels, hidden) if in_channels > 0 else None
        self.coord_proj = nn.Linear(coord_features, hidden, bias=in_channels == 0)
        self.act = nn.GELU(approximate="tanh")
        self.out = ZeroLinear(hidden, hidden)

    def forward(self, coord_feats: Tensor, fields: Tensor | None = None) -> Tensor:
        """coord_feats [b, P, F], fields [B, P, in_channels] -> [B, P, hidden]."""
        dtype = self.coord_proj.weight.dtype
        h = self.coord_proj(coord_feats.to(dtype))
        if self.field_proj is not None:
            h = h + self.field_proj(fields.to(dtype))
        return self.out(self.act(h))


class LatticeEncoder(nn.Module):
    """The shared part of encoding: add each cell's position to its pooled token, then optional
    self-attention over the tokens.

    A token summarises its own neighbourhood (as a patch embedding does on a grid), so the
    operator sees the field's spatial structure instead of a few global summaries; the result
    depends neither on point order nor on the grid the points came from.
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, layers: int = 0):
        super().__init__()
        if layers < 0:
            raise ValueError(f"encoder_layers must be >= 0, got {layers}")
        self.blocks = nn.ModuleList(SelfAttentionBlock(hidden, heads, mlp_ratio, dropout) for _ in range(layers))
        # No LayerNorm on the way out: it would divide each token by its own spread, so the operator
        # could no longer tell a patch from a scaled copy, while the change of a field over a step
        # scales with the field (advection rollout 0.25 with it, 0.10 without: docs/results.md).

    def forward(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """tokens [B, L, hidden] (each cell's pooled points), positions [1, L, hidden] -> z [B, L, hidden]."""
        z = tokens + positions
        for block in self.blocks:
            z = block(z)
        return z
