"""The latent operator: a conditioned transformer that advances the latent state one time step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ups.models.layers import MLP, Attention, ZeroLinear
from ups.models.spectral import SpectralMix


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block with adaptive-LayerNorm shift/scale/gate from a condition.

    The modulation layer is zero-initialised, so the gates are 0 and the block is the
    identity at init: a deep operator starts as z_next = z and learns the increment.
    """

    def __init__(
        self,
        hidden: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        spectral_modes: tuple[int, int, int] | None = None,
        spectral_group: int = 32,
        dims: tuple[int, ...] = (1, 2, 3),
        attention: bool = True,
    ):
        super().__init__()
        self.norm_attn = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads, dropout) if attention else None
        # Token mixing: attention (content-based, any range) and/or a spectral filter over the lattice
        # (position-based, global, periodic), summed under one gate. Without attention (``attention``
        # false) a block is an FNO layer on the tokens (docs/results.md, stage 8: cheaper, and as good).
        self.spectral = SpectralMix(hidden, spectral_modes, spectral_group, dims) if spectral_modes else None
        self.norm_mlp = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(hidden, mlp_ratio, dropout)
        self.modulation = ZeroLinear(hidden, 6 * hidden)

    def forward(self, z: Tensor, c: Tensor, shape: tuple[int, ...] | None = None) -> Tensor:
        """z [B, L, hidden] (on a lattice of ``shape``), c [B or 1, hidden] -> [B, L, hidden]."""
        mods = self.modulation(F.silu(c)).unsqueeze(1).chunk(6, dim=-1)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mods
        h = self.norm_attn(z) * (1 + scale_a) + shift_a
        mixed = self.attn(h, h) if self.attn is not None else None
        if self.spectral is not None and shape is not None:
            spectral = self.spectral(h, shape)
            mixed = spectral if mixed is None else mixed + spectral
        if mixed is not None:
            z = z + gate_a * mixed
        h = self.norm_mlp(z) * (1 + scale_m) + shift_m
        return z + gate_m * self.mlp(h)


class LatentOperator(nn.Module):
    """Residual stack of AdaLN blocks over the latent tokens, shared by all tasks.

    The condition is an MLP embedding of the PDE parameters plus a learned per-task vector.
    Every block is residual, so the whole operator is z_next = z + f(z, cond).
    `blocks` is a plain ModuleList so wrappers can checkpoint / shard block by block.
    """

    def __init__(
        self,
        hidden: int,
        depth: int,
        heads: int,
        cond_dim: int,
        task_keys: list[str],
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        spectral_modes: tuple[int, int, int] | None = None,
        spectral_group: int = 32,
        dims: tuple[int, ...] = (1, 2, 3),
        attention: bool = True,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if not attention and not spectral_modes:
            raise ValueError("an operator without attention needs spectral_modes: nothing else mixes its tokens")
        if cond_dim < 1:
            raise ValueError(f"cond_dim must be >= 1 (pad with zeros if a task has no parameters), got {cond_dim}")
        self.cond_dim = cond_dim
        self.cond_embed = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.task_embed = nn.ParameterDict({key: nn.Parameter(torch.empty(hidden)) for key in task_keys})
        self.blocks = nn.ModuleList(
            AdaLNBlock(hidden, heads, mlp_ratio, dropout, spectral_modes, spectral_group, dims, attention)
            for _ in range(depth)
        )
        self.reset_task_embeddings()

    def reset_task_embeddings(self) -> None:
        """Re-draw the per-task condition vectors."""
        for param in self.task_embed.values():
            nn.init.normal_(param, std=0.02)

    def condition(self, cond: Tensor, task_key: str) -> Tensor:
        """cond [B, cond_dim] -> condition vector [B, hidden] for the adaLN layers."""
        cond = cond.to(self.cond_embed[0].weight.dtype)
        return self.cond_embed(cond) + self.task_embed[task_key]

    def forward(self, z: Tensor, cond: Tensor, task_key: str, shape: tuple[int, ...] | None = None) -> Tensor:
        """z [B, L, hidden] (tokens on a lattice of ``shape``), cond [B, cond_dim] -> z_next [B, L, hidden]."""
        c = self.condition(cond, task_key)
        for block in self.blocks:
            z = block(z, c, shape)
        return z
