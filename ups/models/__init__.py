"""Model families (pure nn.Module code, no distributed logic), each registering a spec.

Every non-private module of this package is imported here, so a new family registers itself by
being a file in ``ups/models/`` that calls :func:`ups.models.spec.register`.
"""

import importlib
import pkgutil

from ups.models.spec import ModelSpec, TaskIO, build, register, spec_of
from ups.models.surrogate import LatentSurrogate
from ups.models.utils import count_parameters, parameter_breakdown

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["LatentSurrogate", "ModelSpec", "TaskIO", "build", "count_parameters", "parameter_breakdown",
           "register", "spec_of"]
