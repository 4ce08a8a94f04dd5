"""Grid-agnostic latent surrogate models (pure nn.Module code, no distributed logic)."""

from ups.models.surrogate import LatentSurrogate, TaskIO
from ups.models.utils import count_parameters, parameter_breakdown

__all__ = ["LatentSurrogate", "TaskIO", "count_parameters", "parameter_breakdown"]
