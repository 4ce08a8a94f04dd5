"""Generative building blocks shared by the stages: EDM diffusion and consistency distillation.

Tensor-only and model-agnostic: a network is any callable ``net(x_in, c_noise, **cond) -> x-shaped``
and the data any tensor with a batch axis first, so the same code trains the latent residual
model of the diffusion stage and the toy densities of the tests.
"""

from ups.generative.consistency import ConsistencyDistillation
from ups.generative.edm import EDM

__all__ = ["EDM", "ConsistencyDistillation"]
