"""Point embeddings and the perceiver-style encoder: a point cloud to a fixed set of latent tokens."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ups.models.layers import CrossAttentionBlock, SelfAttentionBlock


class PointEmbedding(nn.Module):
    """Task-specific lift of [field values, coordinate features] at each point to `hidden`.

    With `in_channels=0` it embeds coordinates only (decoder queries).
    """

    def __init__(self, in_channels: int, coord_features: int, hidden: int):
        super().__init__()
        self.in_channels = in_channels
        # Two projections summed == one Linear on the concatenation, but a batch-1 coordinate
        # grid is then projected once and broadcast over the batch instead of B times.
        self.field_proj = nn.Linear(in_channels, hidden) if in_channels > 0 else None
        self.coord_proj = nn.Linear(coord_features, hidden, bias=in_channels == 0)
        self.act = nn.GELU(approximate="tanh")
        self.out = nn.Linear(hidden, hidden)

    def forward(self, coord_feats: Tensor, fields: Tensor | None = None) -> Tensor:
        """coord_feats [b, P, F], fields [B, P, in_channels] -> [B, P, hidden]."""
        dtype = self.coord_proj.weight.dtype
        h = self.coord_proj(coord_feats.to(dtype))
        if self.field_proj is not None:
            h = h + self.field_proj(fields.to(dtype))
        return self.out(self.act(h))


class PerceiverEncoder(nn.Module):
    """L learned queries cross-attend to point features, then optional latent self-attention.

    The cost is linear in the number of points, and the result does not depend on point order
    or on the grid the points came from.
    """

    def __init__(
        self,
        hidden: int,
        heads: int,
        n_latents: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        layers: int = 1,
    ):
        super().__init__()
        if n_latents < 1:
            raise ValueError(f"n_latents must be >= 1, got {n_latents}")
        if layers < 0:
            raise ValueError(f"encoder_layers must be >= 0, got {layers}")
        self.latents = nn.Parameter(torch.empty(n_latents, hidden))
        self.cross = CrossAttentionBlock(hidden, heads, mlp_ratio, dropout)
        self.blocks = nn.ModuleList(SelfAttentionBlock(hidden, heads, mlp_ratio, dropout) for _ in range(layers))
        # Normalised latents give the operator the same input scale for every task.
        self.norm_out = nn.LayerNorm(hidden)
        self.reset_latents()

    def reset_latents(self) -> None:
        """Re-draw the learned latent queries."""
        # Unit scale (not the usual 0.02): the latents also enter the residual stream, and
        # distinct tokens there stop the decoder seeing L near-copies of one pooled vector,
        # which measurably shortens the initial plateau of training.
        nn.init.normal_(self.latents, std=1.0)

    def forward(self, points: Tensor) -> Tensor:
        """points [B, P, hidden] -> z [B, L, hidden]."""
        z = self.cross(self.latents.unsqueeze(0), points)
        for block in self.blocks:
            z = block(z)
        return self.norm_out(z)
