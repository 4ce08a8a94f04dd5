"""The query decoder: field values at arbitrary coordinates from the latent tokens."""

from __future__ import annotations

from torch import Tensor, nn

from ups.models.layers import CrossAttentionBlock


class QueryDecoder(nn.Module):
    """Query embeddings cross-attend to the latent tokens (attention + MLP per layer).

    Queries never attend to each other, so each output depends only on its own coordinate
    and z: any set of points (finer grid, random points, a subset) can be decoded.
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, layers: int = 1):
        super().__init__()
        if layers < 1:
            raise ValueError(f"decoder_layers must be >= 1, got {layers}")
        self.blocks = nn.ModuleList(CrossAttentionBlock(hidden, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm_out = nn.LayerNorm(hidden)

    def forward(self, queries: Tensor, z: Tensor) -> Tensor:
        """queries [B or 1, Q, hidden], z [B, L, hidden] -> [B, Q, hidden]."""
        x = queries
        for block in self.blocks:
            x = block(x, z)
        return self.norm_out(x)
