"""Facts about the eleven PDEBench families: layout, fields, dimension, domain, parameters.

These are properties of the PDEBench files, not user choices; what a run reads (file patterns,
reductions, context length) is in ``conf/task/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# A float as it appears in PDEBench file names: 0.1, 1.0, 1.e-8, 1e-08.
_NUM = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"


@dataclass(frozen=True)
class Family:
    """One PDEBench family as stored on disk."""

    name: str
    dim: int
    layout: str  # "tensor" (single .hdf5), "group" (one group per sample, .h5), "ns_incom" (batch-first)
    fields: tuple[str, ...]  # datasets stacked as channels, in PDEBench's order
    channels: tuple[str, ...]  # channel names after stacking
    domain: tuple[float, float]  # every spatial axis spans this interval
    params: tuple[tuple[str, str], ...] = ()  # (name, file-name prefix) parsed as conditioning
    steady: bool = False  # Darcy: frame 0 is the coefficient a, frame 1 the solution u
    # "d4": the PDE, its boundaries and its data are unchanged by the square's rotations and
    # reflections, and every channel is a scalar (ups.data.symmetry); "" where that does not hold
    # or is not known. SWE's radial dam breaks are each symmetric already, so a copy adds nothing.
    symmetry: str = ""

    def parse_params(self, path: str | Path) -> dict[str, float]:
        """PDE parameters from a PDEBench file name, e.g. ``beta0.4`` -> {"beta": 0.4}."""
        name = Path(path).name
        out = {}
        for key, prefix in self.params:
            match = re.search(prefix + _NUM, name)
            if match is None:
                raise ValueError(f"{name}: expected '{prefix}<number>' in the file name for {self.name}")
            out[key] = float(match.group(1))
        return out


_CFD = (("M", "_M"), ("eta", "Eta"), ("zeta", "Zeta"))

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("advection1d", 1, "tensor", ("tensor",), ("u",), (0.0, 1.0), (("beta", "beta"),)),
        Family("burgers1d", 1, "tensor", ("tensor",), ("u",), (0.0, 1.0), (("nu", "Nu"),)),
        Family("diff_react1d", 1, "tensor", ("tensor",), ("u",), (0.0, 1.0), (("nu", "Nu"), ("rho", "Rho"))),
        Family("diff_sorp1d", 1, "group", ("data",), ("u",), (0.0, 1.0)),
        Family(
            "cfd1d",
            1,
            "tensor",
            ("density", "pressure", "Vx"),
            ("rho", "p", "vx"),
            (-1.0, 1.0),
            (("eta", "Eta"), ("zeta", "Zeta")),
        ),
        Family(
            "darcy2d", 2, "tensor", ("tensor",), ("u",), (0.0, 1.0), (("beta", "beta"),), steady=True, symmetry="d4"
        ),
        Family("react_diff2d", 2, "group", ("data",), ("u", "v"), (-1.0, 1.0), symmetry="d4"),
        Family("swe2d", 2, "group", ("data",), ("h",), (-2.5, 2.5)),
        Family("cfd2d", 2, "tensor", ("density", "pressure", "Vx", "Vy"), ("rho", "p", "vx", "vy"), (0.0, 1.0), _CFD),
        Family("ns_incom2d", 2, "ns_incom", ("velocity", "particles"), ("vx", "vy", "smoke"), (0.0, 1.0)),
        Family(
            "cfd3d",
            3,
            "tensor",
            ("density", "pressure", "Vx", "Vy", "Vz"),
            ("rho", "p", "vx", "vy", "vz"),
            (0.0, 1.0),
            _CFD,
        ),
    ]
}

COND_PARAMS = 3  # the most parameters any family has (M, eta, zeta); cond = [dt, log10 params...]
COND_DIM = 1 + COND_PARAMS  # width of every conditioning vector; models get it when they are built


def get_family(name: str) -> Family:
    """Look a family up by name, with the valid names in the error."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown PDEBench family {name!r}; known: {', '.join(FAMILIES)}") from None
