"""Spectral mixing over the token lattice: a learned filter on the lowest Fourier modes of the tokens.

The latent tokens of a task sit on a regular lattice (``ups/models/lattice.py``), so the FFT over
its axes is defined whatever grid the data came on. A filter per mode can shift, smooth and sharpen
patterns across the whole domain in one step (what an FNO layer does), which attention has to learn
from positions: on advection1d it took the rollout error from 0.92 to 0.20 (docs/results.md). One
filter per dimension (1D, 2D, 3D) is shared by every task of that dimension; mode ``k`` means ``k``
periods over the domain on every lattice, so lattices of different sizes read the same filter.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn


class SpectralMix(nn.Module):
    """``x -> irfftn(W * rfftn(x))`` over the lattice axes, for signed modes ``|k| < modes[d - 1]`` on a
    d-dimensional lattice (modes beyond are dropped, as in an FNO layer). W mixes the channels per
    mode within groups of ``group`` channels (block-diagonal, as AFNO's blocks): ``group = hidden``
    is an FNO layer's full mixing, ``group = 1`` a depthwise filter. Mixing per mode lets a pattern
    move across cells while the channels rearrange what they hold inside a cell; groups keep the
    parameters linear in the width."""

    def __init__(self, hidden: int, modes: tuple[int, int, int], group: int = 32, dims: tuple[int, ...] = (1, 2, 3)):
        super().__init__()
        self.modes = tuple(int(m) for m in modes)
        if len(self.modes) != 3 or min(self.modes) < 1:
            raise ValueError(f"spectral modes need one entry >= 1 per dimension 1, 2, 3; got {list(modes)}")
        self.group = min(int(group), int(hidden))
        if self.group < 1 or hidden % self.group:
            raise ValueError(f"spectral_group ({group}) must divide hidden ({hidden})")
        # Real and imaginary parts stored as a trailing axis of 2 (real parameters shard and
        # checkpoint like every other). Per dimension d: d-1 signed axes and one rfft axis. Only the
        # dimensions of the run's tasks get a filter (a 3D one is the largest by far).
        # (in-group channel, group, out-group channel): the first axis, which FSDP2 shards over the
        # ranks, is the group width (32) rather than the number of groups (4 for hidden 128), so 8
        # ranks each hold an eighth instead of four of them a quarter.
        lead = (self.group, hidden // self.group, self.group)
        self.filters = nn.ParameterDict(
            {
                str(d): nn.Parameter(torch.empty(*lead, *([2 * m - 1] * (d - 1)), m, 2))
                for d, m in zip((1, 2, 3), self.modes)
                if d in dims
            }
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small random mixing (the block's zero gate keeps the operator the identity at first)."""
        for w in self.filters.values():
            nn.init.normal_(w, std=(2 * self.group) ** -0.5)

    def forward(self, x: Tensor, shape: tuple[int, ...]) -> Tensor:
        """x [B, L, H] on a lattice of ``shape`` (C order) -> [B, L, H]."""
        b, n, h = x.shape
        d = len(shape)
        axes = tuple(range(2, 2 + d))
        grid = x.float().transpose(1, 2).reshape(b, h, *shape)
        spec = torch.fft.rfftn(grid, dim=axes, norm="ortho")
        index, keep = _mode_index(shape, self.modes[d - 1], str(x.device))
        w = torch.view_as_complex(self.filters[str(d)].float())[(slice(None),) * 3 + index] * keep
        spec = spec.unflatten(1, (h // self.group, self.group))
        spec = torch.einsum("bgi...,igo...->bgo...", spec, w).flatten(1, 2)
        out = torch.fft.irfftn(spec, s=shape, dim=axes, norm="ortho")
        return out.reshape(b, h, n).transpose(1, 2).to(x.dtype)


@functools.lru_cache(maxsize=64)
def _mode_index(shape: tuple[int, ...], modes: int, device: str) -> tuple[tuple[Tensor, ...], Tensor]:
    """Index of each rfftn mode of a lattice into the filter, and a 0/1 mask of the modes it keeps."""
    axes = []
    for i, n in enumerate(shape):
        last = i == len(shape) - 1
        k = torch.arange(n // 2 + 1) if last else torch.fft.fftfreq(n, 1.0 / n).round().long()
        axes.append((k if last else k + modes - 1, k.abs() < modes))
    grids = torch.meshgrid(*[a[0] for a in axes], indexing="ij")
    masks = torch.meshgrid(*[a[1] for a in axes], indexing="ij")
    keep = torch.stack(masks).all(0)
    size = [modes if i == len(shape) - 1 else 2 * modes - 1 for i in range(len(shape))]
    index = tuple(g.clamp(0, s - 1).to(device) for g, s in zip(grids, size))
    return index, keep.to(device)
