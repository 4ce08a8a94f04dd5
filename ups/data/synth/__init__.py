"""Synthetic PDEBench data: real numerical solvers at small resolution, written in the exact
PDEBench HDF5 layouts and file names (see /work/shared/pdebench_format.md).

    from ups.data.synth import generate
    paths = generate("advection1d", "data/")        # small defaults, seed 0
    python -m ups.data.synth tasks=pdebench11 out=data/

Each family module has `generate(out_dir, *, n_samples, nx, nt, seed, overwrite, **options)`;
`None` means the family's small default. Files are written atomically (`name.tmp` then
`os.replace`) and skipped when already present unless `overwrite=True`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

# family name -> "module:function"; modules import lazily so `import ups.data.synth` stays cheap
_TARGETS = {
    "advection1d": "advection:generate",
    "burgers1d": "burgers:generate",
    "diff_react1d": "reacdiff1d:generate",
    "diff_sorp1d": "diffsorp:generate",
    "cfd1d": "cfd:generate_1d",
    "darcy2d": "darcy:generate",
    "react_diff2d": "fhn2d:generate",
    "swe2d": "swe:generate",
    "cfd2d": "cfd:generate_2d",
    "ns_incom2d": "ns_incom:generate",
    "cfd3d": "cfd:generate_3d",
}

GROUPS = {
    "pdebench2": ["advection1d", "darcy2d"],
    "pdebench11": list(_TARGETS),
}


def _lazy(target: str) -> Callable:
    """A callable that imports `module:function` of this package on first use."""
    mod, fn = target.split(":")

    def call(*args, **kwargs):
        """Import the target on first use and call it."""
        return getattr(importlib.import_module(f"{__name__}.{mod}"), fn)(*args, **kwargs)

    call.__name__ = f"generate_{mod}_{fn}"
    call.__doc__ = f"Lazily calls ups.data.synth.{mod}.{fn}."
    return call


GENERATORS: dict[str, Callable] = {name: _lazy(t) for name, t in _TARGETS.items()}


def expand_tasks(spec: str) -> list[str]:
    """Turn 'pdebench2' or 'advection1d,burgers1d' into a list of family names (order kept)."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        for name in GROUPS.get(part, [part]):
            if name not in GENERATORS:
                raise ValueError(
                    f"unknown PDE family {name!r}; valid families: {', '.join(GENERATORS)}; groups: {', '.join(GROUPS)}"
                )
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError("no PDE family given")
    return names


def check_sizes(n_samples: int | None, nx: int | None, nt: int | None) -> None:
    """Reject sizes no solver can use (None = family default): stencils and the random
    fields need nx >= 4, a time axis needs nt >= 2 frames."""
    for key, val, low in (("n_samples", n_samples, 1), ("nx", nx, 4), ("nt", nt, 2)):
        if val is not None and (not isinstance(val, (int, np.integer)) or val < low):
            raise ValueError(f"{key} must be an integer >= {low}, got {val!r}")


def generate(
    family: str,
    out_dir: str | Path,
    *,
    n_samples: int | None = None,
    nx: int | None = None,
    nt: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    **options,
) -> list[Path]:
    """Write the synthetic PDEBench file(s) of one family into out_dir; return their paths.

    Files already present are returned without recomputation unless overwrite=True.
    Extra keyword options go to the family (e.g. betas=[0.1, 0.4], variant="turb").
    """
    if family not in GENERATORS:
        raise ValueError(f"unknown PDE family {family!r}; valid families: {', '.join(GENERATORS)}")
    check_sizes(n_samples, nx, nt)
    return GENERATORS[family](out_dir, n_samples=n_samples, nx=nx, nt=nt, seed=seed, overwrite=overwrite, **options)


__all__ = ["GENERATORS", "GROUPS", "check_sizes", "expand_tasks", "generate"]
