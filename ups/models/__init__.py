"""Model families (pure nn.Module code, no distributed logic), each registering a spec.

The package imports lazily, so that ``ups.models.schemas`` (which reads the families' config
schemas from their source) loads without torch: composing a config for ``--help``, ``--cfg`` or
shell completion needs only those. The names below import their module on first use.
:func:`ups.models.spec.specs` imports every non-private module of the package, so a new family
registers itself by being a file in ``ups/models/`` that marks its schema ``@schema("<name>")`` and
calls :func:`ups.models.spec.register`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LatentSurrogate": "surrogate",
    "ModelSpec": "spec",
    "TaskIO": "spec",
    "build": "spec",
    "register": "spec",
    "spec_of": "spec",
    "count_parameters": "utils",
    "parameter_breakdown": "utils",
}


def __getattr__(name: str) -> Any:
    """``from ups.models import X``: import X's module now (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = sorted(_EXPORTS)
