"""PDEBench's U-Net baseline (UNet1d/2d/3d), one independent network per task.

Each task network is PDEBench's ``models/unet/unet.py`` U-Net for the task's dimension: four
encoder blocks with 2x max-pooling, a bottleneck at 16x ``init_features``, four decoder levels
(2x transposed convolution, concatenation with the skip, block) and a 1x1 output convolution.
A block is conv3-norm-tanh-conv3-norm-tanh without conv biases. The input is the ``initial_step``
frames stacked as channels; no coordinates are appended (PDEBench's U-Net sees none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ups.models.grid_baseline import GridBaseline
from ups.models.schemas import schema
from ups.models.spec import ModelSpec, TaskIO, grid_to_points, points_to_grid, register

LEVELS = 4  # poolings, so every axis must be a multiple of 2**LEVELS
MULTIPLE = 2**LEVELS
NORMS = ("batch", "group")


@schema("unet")  # read from this source without torch when configs compose (ups/models/schemas.py)
@dataclass
class UNetConfig:
    """``conf/model/unet*.yaml``: U-Net sizes (tasks and cond_dim come from the data)."""

    _target_: str = "ups.models.unet.UNet"
    init_features: int = 32  # channels of the first level (doubling per level, 16x at the bottleneck)
    norm: str = "batch"  # "batch" (PDEBench) or "group"
    max_3d_sample_gib: float = 2.0  # refuse a 3D task whose one-sample forward/backward needs more


def padded_grid(grid: tuple[int, ...]) -> tuple[int, ...]:
    """Each axis rounded up to the next multiple of 16, so four 2x poolings divide it exactly."""
    return tuple(-(-n // MULTIPLE) * MULTIPLE for n in grid)


def sample_bytes(grid: tuple[int, ...], in_channels: int, features: int) -> int:
    """Rough float32 memory of one sample's forward + backward through the U-Net, in bytes.

    Autograd keeps per point of level l (n_l points, c_l = features * 2**l channels): ~4 c_l
    in the encoder block (conv and tanh outputs), ~6 c_l in the decoder (the concatenated skip
    and its block), plus the int64 pooling indices and the bottleneck. The backward pass adds
    the gradients of one level at a time on top; 1.5x the saved activations covers that.
    """
    points = math.prod(padded_grid(grid))
    dim = len(grid)
    saved = points * in_channels
    for level in range(LEVELS):
        n, c = points / 2 ** (dim * level), features * 2**level
        saved += 10 * c * n + 2 * c * n / 2**dim  # activations + pooling indices (8 bytes = 2 floats)
    saved += 4 * features * 2**LEVELS * points / 2 ** (dim * LEVELS)  # bottleneck
    return int(1.5 * 4 * saved)


def _norm(dim: int, channels: int, norm: str) -> nn.Module:
    if norm == "batch":
        return getattr(nn, f"BatchNorm{dim}d")(channels)
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ConvBlock(nn.Sequential):
    """conv3 -> norm -> tanh -> conv3 -> norm -> tanh (bias-free convs: the norm re-centres).

    The forward is defined here, not inherited, because ``block.compile()`` silently compiles
    nothing for a module whose whole forward lives in torch's own files (plain ``nn.Sequential``).
    """

    def __init__(self, dim: int, in_channels: int, features: int, norm: str):
        conv = getattr(nn, f"Conv{dim}d")
        super().__init__(
            conv(in_channels, features, kernel_size=3, padding=1, bias=False),
            _norm(dim, features, norm),
            nn.Tanh(),
            conv(features, features, kernel_size=3, padding=1, bias=False),
            _norm(dim, features, norm),
            nn.Tanh(),
        )

    def forward(self, h: Tensor) -> Tensor:
        """(B, in_channels, *grid) -> (B, features, *grid)."""
        for layer in self:
            h = layer(h)
        return h


class UNetNet(nn.Module):
    """The U-Net of one task: (B, k*C, *grid) -> (B, C, *grid), every axis a multiple of 16."""

    def __init__(self, io: TaskIO, features: int, norm: str):
        super().__init__()
        dim = io.dim
        widths = [features * 2**level for level in range(LEVELS)]
        self.encoders = nn.ModuleList(
            ConvBlock(dim, c_in, c, norm) for c_in, c in zip([io.in_channels] + widths[:-1], widths)
        )
        self.bottleneck = ConvBlock(dim, widths[-1], 2 * widths[-1], norm)
        up = getattr(nn, f"ConvTranspose{dim}d")
        self.upconvs = nn.ModuleList(up(2 * c, c, kernel_size=2, stride=2) for c in reversed(widths))
        self.decoders = nn.ModuleList(ConvBlock(dim, 2 * c, c, norm) for c in reversed(widths))
        self.out = getattr(nn, f"Conv{dim}d")(features, io.out_channels, kernel_size=1)
        self._pool = getattr(F, f"max_pool{dim}d")

    def forward(self, h: Tensor) -> Tensor:
        """Encode with skips, decode with the skips concatenated after each upsampling."""
        skips = []
        for encoder in self.encoders:
            h = encoder(h)
            skips.append(h)
            h = self._pool(h, kernel_size=2, stride=2)
        h = self.bottleneck(h)
        for upconv, decoder, skip in zip(self.upconvs, self.decoders, reversed(skips)):
            h = decoder(torch.cat([upconv(h), skip], dim=1))
        return self.out(h)


class UNet(GridBaseline):
    """PDEBench's U-Net baseline: one independent U-Net per task, sharing no parameters.

    ``cond_dim`` is accepted and ignored, as PDEBench's U-Net does not see PDE parameters.
    ``norm="batch"`` (default) is PDEBench's BatchNorm, kept so results compare with its
    published numbers; ``"group"`` (GroupNorm, 8 groups) has no batch dependence: no running
    statistics, so the same output in train and eval, nothing to synchronise across ranks, and no
    double update of running statistics when activation checkpointing reruns a block.
    A grid whose axes are not multiples of 16 is padded by replicating its edge values (zeros
    would put a jump at the boundary of fields that are not zero there) and cropped back. A 3D
    task whose one-sample forward/backward needs more than ``max_3d_sample_gib`` is refused.
    """

    def __init__(
        self,
        tasks: Mapping[str, TaskIO | Mapping],
        cond_dim: int = 0,
        init_features: int = 32,
        norm: str = "batch",
        max_3d_sample_gib: float = 2.0,
    ):
        super().__init__(tasks)
        if init_features < 1 or norm not in NORMS:
            raise ValueError(
                f"UNet needs init_features >= 1 and norm in {NORMS}, got init_features={init_features} norm={norm!r}"
            )
        for name, io in self.tasks.items():
            if io.dim == 3 and io.grid:
                gib = sample_bytes(io.grid, io.in_channels, init_features) / 2**30
                if gib > max_3d_sample_gib:
                    raise ValueError(
                        f"UNet: 3D task {name!r} on grid {io.grid} (padded to {padded_grid(io.grid)}) with "
                        f"init_features={init_features} needs ~{gib:.1f} GiB per sample for forward/backward, over "
                        f"model.max_3d_sample_gib={max_3d_sample_gib}; lower model.init_features or the "
                        f"resolution, or raise model.max_3d_sample_gib"
                    )
        self.nets = nn.ModuleDict(
            {self._keys[name]: UNetNet(io, int(init_features), norm) for name, io in self.tasks.items()}
        )

    def forward(
        self,
        task: str,
        x: Tensor,
        coords: Tensor | None = None,
        cond: Tensor | None = None,
        grid: tuple[int, ...] | None = None,
        latents: Tensor | None = None,
    ) -> Tensor:
        """x (B, P, k*C) -> next frame (B, P, C); coords and cond are ignored (PDEBench's U-Net)."""
        key, _, grid = self.prepare(task, x, grid, latents)
        h = points_to_grid(x, grid)
        padded = padded_grid(grid)
        if padded != grid:
            # F.pad lists the last axis first; pad only at the end so cropping is [:n].
            pad = [v for n, p in zip(reversed(grid), reversed(padded)) for v in (0, p - n)]
            h = F.pad(h, pad, mode="replicate")
        y = self.nets[key](h)
        if padded != grid:
            y = y[(Ellipsis, *(slice(0, n) for n in grid))]
        return grid_to_points(y)


SPEC = register(
    ModelSpec(
        name="unet",
        model=UNet,
        schema=UNetConfig,
        blocks=lambda m: [b for net in m.nets.values() for b in (*net.encoders, net.bottleneck, *net.decoders)],
        groups=lambda m: {
            "encoder": nn.ModuleList(nn.ModuleList([*net.encoders, net.bottleneck]) for net in m.nets.values()),
            "decoder": nn.ModuleList(nn.ModuleList([net.upconvs, net.decoders, net.out]) for net in m.nets.values()),
        },
        latent=None,
        single_task=True,
    )
)
