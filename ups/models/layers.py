"""Building blocks shared by the encoder, the latent operator and the decoder."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FourierFeatures(nn.Module):
    """Fixed sin/cos features of coordinates in [-1, 1]^d, concatenated with the raw coordinates.

    Frequencies are geometric between pi and pi * max_freq (the same for every axis), so one
    set covers both domain-scale structure and features a few cells wide on fine grids.
    """

    def __init__(self, n_freqs: int, max_freq: float = 128.0):
        super().__init__()
        if n_freqs < 1:
            raise ValueError(f"fourier_features must be >= 1, got {n_freqs}")
        if max_freq < 1:
            raise ValueError(f"max_freq must be >= 1, got {max_freq}")
        self.n_freqs = int(n_freqs)
        self.max_freq = float(max_freq)

    def out_dim(self, dim: int) -> int:
        """Width of the features for `dim`-dimensional coordinates."""
        return dim * (2 * self.n_freqs + 1)

    def forward(self, coords: Tensor) -> Tensor:
        """[..., d] coordinates -> [..., d * (2F + 1)] float32 features."""
        # Built on the fly rather than stored as a buffer: nothing to lose when a wrapper
        # materialises the model from the meta device or loads a checkpoint.
        freqs = math.pi * torch.logspace(0.0, math.log2(self.max_freq), self.n_freqs, base=2.0, device=coords.device)
        # float32 on purpose: sin(pi * 128 * x) is meaningless at bf16 precision of x.
        x = coords.float()
        proj = (x.unsqueeze(-1) * freqs).flatten(-2)
        return torch.cat([x, proj.sin(), proj.cos()], dim=-1)


class ZeroLinear(nn.Linear):
    """Linear layer whose (re)initialisation is all zeros, used for adaLN gates.

    Overriding `reset_parameters` keeps blocks identity-at-init even when a wrapper
    re-initialises modules after materialising them from the meta device.
    """

    def reset_parameters(self) -> None:
        """Zero weight and bias."""
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class MLP(nn.Module):
    """Two-layer GELU feed-forward network."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        inner = max(1, int(round(dim * mlp_ratio)))
        self.fc1 = nn.Linear(dim, inner)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(inner, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP over the last dimension."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head (cross- or self-) attention with per-head QK RMSNorm, via SDPA.

    `x` gives the queries and `context` the keys/values; their batch sizes may be 1 and B
    (a shared query set or a shared point cloud is broadcast over the batch).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"hidden ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.head_dim = dim // heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        # QK-norm bounds the attention logits, which keeps long training runs and bf16 stable.
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x [b, N, dim], context [b', M, dim] -> [max(b, b'), N, dim]."""
        if x is context:
            q, k, v = self._self_qkv(x)
        else:
            q = self.to_q(x).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
            k, v = self.to_kv(context).unflatten(-1, (2, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
            # Normalise in float32 (the fused kernel needs input and weight in one dtype, and the
            # statistics are more accurate), then return to v's dtype, which SDPA requires.
            q = self.q_norm(q.float()).to(v.dtype)
            k = self.k_norm(k.float()).to(v.dtype)
        # Fused SDPA kernels do not broadcast the batch dim; expand is a view, not a copy.
        b = max(q.shape[0], k.shape[0])
        q = q.expand(b, -1, -1, -1)
        k = k.expand(b, -1, -1, -1)
        v = v.expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).flatten(-2))

    def _self_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v [b, heads, N, head_dim] of self-attention: one matrix product for the three (the
        weights of ``to_q`` and ``to_kv`` side by side, so parameters and checkpoints are unchanged) and
        one RMS normalisation for q and k with their own weights. The same arithmetic as the cross path,
        in fewer ops: 37 instead of 64 for one layer's forward and backward (tests/test_attention_fused.py)."""
        weight = torch.cat([self.to_q.weight, self.to_kv.weight])
        bias = torch.cat([self.to_q.bias, self.to_kv.bias])
        qkv = F.linear(x, weight, bias).unflatten(-1, (3, self.heads, self.head_dim))  # [b, N, 3, heads, hd]
        # split and unbind, not indexing: their backward is one cat or stack, where each index's is a
        # zero-filled tensor and a copy
        qk, v = qkv.split([2, 1], dim=2)
        v = v.squeeze(2).transpose(1, 2)
        # as nn.RMSNorm does it: float32 statistics, then the weight, then back to v's dtype for SDPA
        scale = torch.stack([self.q_norm.weight, self.k_norm.weight]).unsqueeze(1)  # [2, 1, head_dim]
        qk = F.rms_norm(qk.float(), (self.head_dim,), None, self.q_norm.eps) * scale
        q, k = qk.to(v.dtype).transpose(1, 3).unbind(2)  # [b, heads, N, head_dim] each
        return q, k, v


class CrossAttentionBlock(nn.Module):
    """Pre-norm block: x attends to context, then an MLP, both residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x [b, N, dim], context [B, M, dim] -> [B, N, dim]."""
        x = x + self.attn(self.norm_q(x), self.norm_kv(context))
        return x + self.mlp(self.norm_mlp(x))


class SelfAttentionBlock(nn.Module):
    """Plain pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, N, dim] -> [B, N, dim]."""
        h = self.norm_attn(x)
        x = x + self.attn(h, h)
        return x + self.mlp(self.norm_mlp(x))


def init_weights(module: nn.Module) -> None:
    """Xavier-uniform plain Linear layers with zero bias; other modules keep their own init."""
    # Exact type check: ZeroLinear subclasses nn.Linear and must stay zero.
    if type(module) is nn.Linear:
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
