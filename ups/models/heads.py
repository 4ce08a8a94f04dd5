"""Networks that later stages attach to a latent model (``model.stage_heads``), and train with it frozen.

- :class:`ResidualDenoiser`: the diffusion stage's ``F(x_in, c_noise)`` over the latent tokens,
  conditioned on the frozen operator's predicted tokens, the PDE parameters and the task. Its
  buffer ``scales`` holds, per task, the RMS of the residual it models, so the residual enters
  the diffusion process at unit scale whatever the task. The consistency student is a copy.
The steady prior's head is a copy of the latent operator itself (``ups/objectives/steady.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ups.models.layers import init_weights
from ups.models.operator import AdaLNBlock


def noise_features(c_noise: Tensor, n: int) -> Tensor:
    """(B,) noise levels -> (B, 2n) sin/cos features at geometric frequencies 1 .. 1000."""
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), n, device=c_noise.device))
    arg = c_noise.float()[:, None] * freqs
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


class ResidualDenoiser(nn.Module):
    """Noise-conditioned transformer over latent tokens: ``F(x_in, c_noise; z_pred, cond, task)``."""

    def __init__(
        self,
        hidden: int,
        cond_dim: int,
        task_keys: list[str],
        width: int | None = None,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        n_noise: int = 32,
    ):
        super().__init__()
        width = int(width or hidden)
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.n_noise = int(n_noise)
        self.index = {k: i for i, k in enumerate(task_keys)}
        self.pred_norm = nn.LayerNorm(hidden)  # the operator's tokens, whatever their scale
        self.inp = nn.Linear(2 * hidden, width)
        self.noise_embed = nn.Sequential(nn.Linear(2 * self.n_noise, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_embed = nn.Sequential(nn.Linear(cond_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.task_embed = nn.Parameter(torch.zeros(len(task_keys), width))
        self.blocks = nn.ModuleList(AdaLNBlock(width, heads, mlp_ratio) for _ in range(int(depth)))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, hidden)
        self.register_buffer("scales", torch.ones(len(task_keys)))
        self.apply(init_weights)  # AdaLN gates stay zero: each block starts as the identity

    def scale(self, task_key: str) -> Tensor:
        """The residual RMS of a task (set when its stage starts, then kept in checkpoints)."""
        return self.scales[self.index[task_key]]

    def forward(self, x: Tensor, c_noise: Tensor, *, z_pred: Tensor, cond: Tensor, task_key: str) -> Tensor:
        """x [B, L, hidden] (preconditioned noisy residual), c_noise [B], z_pred [B, L, hidden], cond [B, cond_dim]."""
        h = self.inp(torch.cat([x, self.pred_norm(z_pred).to(x.dtype)], dim=-1))
        c = (
            self.noise_embed(noise_features(c_noise, self.n_noise).to(h.dtype))
            + self.cond_embed(cond.to(h.dtype))
            + self.task_embed[self.index[task_key]]
        )
        for block in self.blocks:
            h = block(h, c)
        return self.out(F.silu(self.out_norm(h)))
