"""The model families' config schemas (``schema/model/<name>`` in Hydra's ConfigStore).

They live apart from the ``nn.Module`` code and import nothing heavy: composing a config, which
``--help``, ``--cfg job`` and every TAB of shell completion do, needs them, and importing torch
for that took longer than the rest of the start-up. The model files import their schema from
here and name it in their :class:`~ups.models.spec.ModelSpec`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LatentSurrogateConfig:
    """``conf/model/{tiny,small,base,large}.yaml``: sizes of the latent surrogate (tasks and cond_dim come from the data)."""

    _target_: str = "ups.models.surrogate.LatentSurrogate"
    hidden: int = 128
    depth: int = 4
    heads: int = 4
    n_latents: int = 32
    fourier_features: int = 16
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    encoder_layers: int = 1
    decoder_layers: int = 1


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
