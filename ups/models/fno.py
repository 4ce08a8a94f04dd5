"""PDEBench's Fourier Neural Operator baseline (FNO1d/2d/3d), one independent network per task.

Each task network follows PDEBench's ``models/fno/fno.py``: the ``initial_step`` context frames and
the grid coordinates are lifted per point by ``Linear(k*C + dim -> width)``; ``layers`` Fourier
layers each add a spectral convolution (the retained low modes, one weight per corner of the
spectrum) to a 1x1 convolution, with GELU after all but the last; ``Linear(width -> 128)``, GELU,
``Linear(128 -> C)`` project back. Lifting points before reshaping to the grid is the same as
PDEBench's channels-last lift, since the Linear acts on each point alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ups.models.grid_baseline import GridBaseline
from ups.models.schemas import schema
from ups.models.spec import ModelSpec, TaskIO, grid_to_points, points_to_grid, register
from ups.models.task_settings import task_settings

HEAD_HIDDEN = 128  # PDEBench's fc1 width


@schema("fno")  # read from this source without torch when configs compose (ups/models/schemas.py)
@dataclass
class FNOConfig:
    """``conf/model/fno*.yaml``: FNO sizes (tasks and cond_dim come from the data)."""

    _target_: str = "ups.models.fno.FNO"
    modes: int = 12  # Fourier modes kept per axis (clamped to the grid)
    width: int = 20  # channels of the Fourier layers
    layers: int = 4  # Fourier layers
    padding: int = 0  # zeros appended to every axis before the Fourier layers (non-periodic problems)
    by_task: Dict[str, Dict[str, int]] = field(default_factory=dict)  # by task name: context (the last frames read)


def clamp_modes(modes: int, grid: tuple[int, ...]) -> tuple[int, ...]:
    """Modes per axis that fit ``grid``: n//2 on full-FFT axes (the +/- corners must not overlap),
    n//2 + 1 on the last axis (rfft keeps only the non-negative half)."""
    *full, last = grid
    return tuple(max(1, min(modes, n // 2)) for n in full) + (max(1, min(modes, last // 2 + 1)),)


class SpectralConv(nn.Module):
    """Multiply the retained Fourier modes by learned complex weights (channel mixing per mode).

    Along every axis but the last the spectrum keeps both the lowest positive and the lowest
    negative frequencies, so a d-dimensional layer holds 2**(d-1) corner weights, as PDEBench's
    SpectralConv1d/2d/3d. Weights are stored real with a trailing (re, im) axis: optimizers, FSDP
    and bf16 parameter casts handle real tensors only or best; the FFT runs in float32 (no bf16 FFT).
    """

    def __init__(self, width: int, modes: tuple[int, ...]):
        super().__init__()
        self.modes = tuple(int(m) for m in modes)
        dim = len(self.modes)
        letters = "xyz"[:dim]
        self._eq = f"bi{letters},io{letters}->bo{letters}"
        scale = 1.0 / (width * width)  # PDEBench's init: uniform [0, scale) for re and im
        self.weight = nn.Parameter(scale * torch.rand(2 ** (dim - 1), width, width, *self.modes, 2))

    def forward(self, x: Tensor) -> Tensor:
        """(B, width, *grid) -> (B, width, *grid)."""
        dim = len(self.modes)
        size = tuple(x.shape[-dim:])
        axes = tuple(range(-dim, 0))
        # A grid smaller than the one the modes were sized for keeps fewer of them.
        used = tuple(min(m, c) for m, c in zip(self.modes, clamp_modes(max(self.modes), size)))
        with torch.autocast(device_type=x.device.type, enabled=False):
            x_ft = torch.fft.rfftn(x.float(), dim=axes)
            weight = torch.view_as_complex(self.weight.float())
            out_ft = x_ft.new_zeros(x_ft.shape[0], weight.shape[2], *x_ft.shape[2:])
            for corner, negative in enumerate(itertools.product((False, True), repeat=dim - 1)):
                where, take = [slice(None), slice(None)], [corner, slice(None), slice(None)]
                for n, m, full, neg in zip(size, used, self.modes, negative):
                    # Negative frequencies sit at the end of both the spectrum and the weight.
                    where.append(slice(n - m, n) if neg else slice(0, m))
                    take.append(slice(full - m, full) if neg else slice(0, m))
                where.append(slice(0, used[-1]))
                take.append(slice(0, used[-1]))
                out_ft[tuple(where)] = torch.einsum(self._eq, x_ft[tuple(where)], weight[tuple(take)])
            y = torch.fft.irfftn(out_ft, s=size, dim=axes)
        return y.to(x.dtype)


class FourierLayer(nn.Module):
    """One FNO layer, ``act(K(h) + W h)``: the unit of activation checkpointing, compile and FSDP."""

    def __init__(self, dim: int, width: int, modes: tuple[int, ...], activation: bool = True):
        super().__init__()
        self.spectral = SpectralConv(width, modes)
        self.pointwise = getattr(nn, f"Conv{dim}d")(width, width, kernel_size=1)
        self.act = nn.GELU() if activation else nn.Identity()

    def forward(self, h: Tensor) -> Tensor:
        """(B, width, *grid) -> (B, width, *grid)."""
        return self.act(self.spectral(h) + self.pointwise(h))


class FNONet(nn.Module):
    """The FNO of one task (PDEBench's FNO1d/2d/3d for that task's dimension and channels)."""

    def __init__(self, io: TaskIO, modes: int, width: int, layers: int, padding: int, channels: int):
        super().__init__()
        self.dim, self.padding = io.dim, int(padding)
        self.channels = channels  # the last input channels it reads (model.by_task context; all by default)
        # Without a known grid the modes cannot be clamped here; SpectralConv still clamps per call.
        axis_modes = clamp_modes(modes, tuple(n + self.padding for n in io.grid)) if io.grid else (modes,) * io.dim
        self.lift = nn.Linear(self.channels + io.dim, width)
        self.layers = nn.ModuleList(
            FourierLayer(io.dim, width, axis_modes, activation=i < layers - 1) for i in range(layers)
        )
        self.head = nn.Sequential(nn.Linear(width, HEAD_HIDDEN), nn.GELU(), nn.Linear(HEAD_HIDDEN, io.out_channels))

    def forward(self, x: Tensor, coords: Tensor, grid: tuple[int, ...]) -> Tensor:
        """x (B, P, k*C), coords (B, P, dim) -> (B, P, C) on the same points."""
        h = points_to_grid(self.lift(torch.cat([x[..., -self.channels :], coords], dim=-1)), grid)
        if self.padding:
            # Zeros after the end of every axis, as PDEBench's F.pad: the FFT then no longer wraps
            # the right boundary onto the left one (meant for non-periodic problems).
            h = F.pad(h, [0, self.padding] * self.dim)
        for layer in self.layers:
            h = layer(h)
        if self.padding:
            h = h[(Ellipsis, *(slice(0, n) for n in grid))]
        return self.head(grid_to_points(h))


class FNO(GridBaseline):
    """PDEBench's FNO baseline: one independent FNO per task, sharing no parameters.

    ``cond_dim`` is accepted for the common model signature and ignored: PDEBench's FNO does not
    see the PDE parameters (one model is trained per parameter value). Modes are clamped per axis
    to what the task's (padded) grid holds. ``padding`` zero-pads the end of every axis
    (PDEBench pads 2 in 1D and 2D, and 6 on the last axis only in 3D).
    """

    def __init__(
        self,
        tasks: Mapping[str, TaskIO | Mapping],
        cond_dim: int = 0,
        modes: int = 12,
        width: int = 20,
        layers: int = 4,
        padding: int = 0,
        by_task: Mapping[str, Mapping[str, int]] | None = None,
    ):
        super().__init__(tasks)
        if min(modes, width, layers) < 1 or padding < 0:
            raise ValueError(
                f"FNO needs modes, width, layers >= 1 and padding >= 0, got "
                f"modes={modes} width={width} layers={layers} padding={padding}"
            )
        _, channels, _ = task_settings(by_task or {}, self.tasks, allowed=("context",))
        self.nets = nn.ModuleDict(
            {
                self._keys[name]: FNONet(io, int(modes), int(width), int(layers), int(padding), channels[name])
                for name, io in self.tasks.items()
            }
        )

    def forward(
        self,
        task: str,
        x: Tensor,
        coords: Tensor,
        cond: Tensor | None = None,
        grid: tuple[int, ...] | None = None,
        latents: Tensor | None = None,
    ) -> Tensor:
        """x (B, P, k*C), coords (1 or B, P, dim) in [-1, 1] -> next frame (B, P, C); cond is ignored."""
        key, io, grid = self.prepare(task, x, grid, latents)
        if (
            coords.dim() != 3
            or coords.shape[-1] != io.dim
            or coords.shape[0] not in (1, x.shape[0])
            or coords.shape[1] != x.shape[1]
        ):
            raise ValueError(
                f"task {task!r}: coords must be (1 or {x.shape[0]}, {x.shape[1]}, {io.dim}), got {tuple(coords.shape)}"
            )
        coords = coords.to(x.dtype).expand(x.shape[0], -1, -1)
        return self.nets[key](x, coords, grid)


SPEC = register(
    ModelSpec(
        name="fno",
        model=FNO,
        schema=FNOConfig,
        blocks=lambda m: [layer for net in m.nets.values() for layer in net.layers],
        groups=lambda m: {
            "lift": nn.ModuleList(net.lift for net in m.nets.values()),
            "fourier": nn.ModuleList(net.layers for net in m.nets.values()),
            "head": nn.ModuleList(net.head for net in m.nets.values()),
        },
        latent=None,
        single_task=True,
    )
)
