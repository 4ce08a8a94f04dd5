"""The model families' config schemas (``schema/model/<name>`` in Hydra's ConfigStore).

They live apart from the ``nn.Module`` code and import nothing heavy: composing a config, which
``--help``, ``--cfg job`` and every TAB of shell completion do, needs them, and importing torch
for that took longer than the rest of the start-up. The model files import their schema from
here and name it in their :class:`~ups.models.spec.ModelSpec`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List


@dataclass
class LatentSurrogateConfig:
    """``conf/model/{tiny,small,base,large}.yaml``: sizes of the latent surrogate (tasks and cond_dim come from the data)."""

    _target_: str = "ups.models.surrogate.LatentSurrogate"
    hidden: int = 128
    depth: int = 4
    heads: int = 4
    # Grid points per token along each axis, for 1D, 2D and 3D tasks: a task's lattice is its grid
    # divided by these (docs/architecture.md); ``lattice`` gives the cells per axis of a task whose
    # points form no known grid.
    patch: List[int] = field(default_factory=lambda: [4, 4, 2])
    lattice: List[int] = field(default_factory=lambda: [16, 8, 4])
    fourier_features: int = 4  # sin/cos frequencies of positions (inside a cell, and of the cells)
    basis: int = 16  # functions per cell the decoder combines (>= grid points per cell to reproduce a patch)
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    encoder_layers: int = 0  # self-attention blocks after pooling
    decoder_layers: int = 0  # self-attention blocks before the coefficient heads
    # Fourier modes per lattice axis the operator's spectral mixing keeps, for 1D, 2D and 3D tasks
    # (empty: attention only), and the channels mixed together per mode (hidden: all, as FNO; 1: depthwise).
    spectral_modes: List[int] = field(default_factory=lambda: [8, 8, 4])
    spectral_group: int = 32
    predict_change: bool = True  # the network outputs next frame - last frame (the objectives add it back)


@dataclass
class FNOConfig:
    """``conf/model/fno*.yaml``: FNO sizes (tasks and cond_dim come from the data)."""

    _target_: str = "ups.models.fno.FNO"
    modes: int = 12  # Fourier modes kept per axis (clamped to the grid)
    width: int = 20  # channels of the Fourier layers
    layers: int = 4  # Fourier layers
    padding: int = 0  # zeros appended to every axis before the Fourier layers (non-periodic problems)


@dataclass
class UNetConfig:
    """``conf/model/unet*.yaml``: U-Net sizes (tasks and cond_dim come from the data)."""

    _target_: str = "ups.models.unet.UNet"
    init_features: int = 32  # channels of the first level (doubling per level, 16x at the bottleneck)
    norm: str = "batch"  # "batch" (PDEBench) or "group"
    max_3d_sample_gib: float = 2.0  # refuse a 3D task whose one-sample forward/backward needs more


# Family name (its spec's ``name``, the ``/schema/model/<name>`` a conf/model file starts from) ->
# schema. A new family adds its dataclass above and a line here.
SCHEMAS: dict[str, type] = {
    "latent": LatentSurrogateConfig,
    "fno": FNOConfig,
    "unet": UNetConfig,
}
