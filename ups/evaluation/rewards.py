"""Physics rewards on decoded fields, for test-time correction (TTC) to rank candidate next frames.

Every term is a violation measure turned into a reward: 0 when the candidate satisfies the
property, negative otherwise, scale-free (relative to the fields' own magnitude, so terms of
different families and units are comparable) and bounded by a few units. The reward is the sum of
a family's terms. Terms are only those the family's PDE really satisfies (see the generators in
``ups/data/synth``): a candidate that breaks one is wrong whatever the model believes.

=============  ===========================================  =========================================
family         terms                                        why
=============  ===========================================  =========================================
advection1d    mass, l2                                     u_t + beta u_x = 0 (periodic) shifts u: every
                                                            integral of u and of u^2 is conserved
burgers1d      mass, energy_growth, bounds                  conservative flux on a periodic domain; viscosity
                                                            and shocks only dissipate int u^2; maximum
                                                            principle: u stays in [min, max] of prev
diff_react1d   bounds [min prev, 1], mass_growth            Fisher-KPP keeps u <= 1 and min u never falls;
                                                            the reaction rho u(1-u) >= 0: int u never falls
diff_sorp1d    bounds [0,1]                                 concentration between 0 and the solubility 1
                                                            (inflow BC u=1, u0 in [0, 0.2]); flux BCs move mass
cfd1d/2d/3d    mass, momentum, energy, positivity (rho, p)  periodic compressible NS in flux form conserves
                                                            rho, rho v, E = p/(Gamma-1) + rho|v|^2/2
darcy2d        residual, boundary, positivity               -div(a grad u) = beta (beta > 0, not passed so
                                                            fitted), u = 0 on the box faces, hence u > 0
react_diff2d   bounds (invariant square), pde (given dt)    FitzHugh-Nagumo: [-U,U]^2 is invariant when
                                                            U^3 - 2U - k >= 0, so |u|,|v| <= max(U0, |prev|);
                                                            cand - prev = dt (f(prev) + f(cand)) / 2
swe2d          mass, positivity (h)                         int h is conserved until the dam-break wave
                                                            reaches the outflow walls (~t = 1 at 128^2, but
                                                            earlier on coarse grids: see REWARDS); h > 0
ns_incom2d     divergence, smoke_mass                       div v = 0; smoke is advected by a divergence-free
                                                            field with no normal flow through the walls
=============  ===========================================  =========================================

Conventions. ``prev`` and ``cand`` are (B, P, C) in physical units, P the C-order flattening of
``grid``, channels in ``family.channels`` order; points are cell centres of the family's domain (or
``domain``). Conservation terms compare domain means of the two frames; they assume periodic or
closed boundaries, so PDEBench's 1D CFD ``trans`` (outgoing) files break them by design.
"""

from __future__ import annotations

import math

import torch

from ups.data.registry import Family

EPS = 1e-12  # only reached when both frames are zero: then every ratio is 0/EPS = 0
GAMMA = 5.0 / 3.0  # PDEBench's compressible solver and ours
FHN_K = 5e-3  # FitzHugh-Nagumo's k (ups/data/synth/fhn2d.py, PDEBench's sim_diff_react.py)
FHN_DU, FHN_DV = 1e-3, 5e-3  # its diffusion coefficients (the same sources)


def _fhn_box() -> float:
    """Smallest U with U^3 - 2U - k >= 0: below it the square [-U, U]^2 need not be invariant."""
    lo, hi = 1.0, 2.0  # f(1) < 0 < f(2); bisection, evaluated once at import
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mid**3 - 2 * mid - FHN_K < 0 else (lo, mid)
    return hi


FHN_BOX = _fhn_box()  # ~1.4159

REWARDS: dict[str, str] = {
    "advection1d": "mass, l2: periodic advection only shifts u, so int u and int u^2 are conserved",
    "burgers1d": "mass, energy_growth, bounds: periodic conservative flux conserves int u; viscosity and "
    "shocks only dissipate int u^2; maximum principle keeps u in the previous frame's range",
    "diff_react1d": "bounds [min prev, 1], mass_growth: Fisher-KPP keeps u <= 1, min u never decreases and "
    "the reaction only adds mass",
    "diff_sorp1d": "bounds [0,1]: the concentration stays between 0 and the solubility 1; boundary fluxes "
    "change the mass, so no conservation term",
    "cfd1d": "mass, momentum, energy, positivity (rho, p): periodic compressible NS in flux form",
    "darcy2d": "residual of -div(a grad u) = beta (beta fitted: it is not passed), boundary u = 0, "
    "positivity u > 0 (beta > 0); a wrong overall scale is invisible without beta",
    "react_diff2d": "bounds: FitzHugh-Nagumo's invariant square |u|, |v| <= max(1.416, max |prev|); pde (given "
    "dt): the trapezoid rule's misfit of the PDE over the step, which the box alone misses "
    "(-u, a frame that changed too little); no conservation (reaction)",
    "swe2d": "mass, positivity (h): int h is conserved while the wave is inside the outflow walls (coarse "
    "grids smear the front: the synthetic 16^2 data loses ~1e-5 of int h by t = 0.5, ~1e-3 by t = 1)",
    "cfd2d": "mass, momentum, energy, positivity (rho, p): periodic compressible NS in flux form",
    "ns_incom2d": "divergence (div v = 0, floor O((kh)^2) from the stencil), smoke_mass: passive smoke in "
    "a divergence-free flow",
    "cfd3d": "mass, momentum, energy, positivity (rho, p): periodic compressible NS in flux form",
}


# ------------------------------------------------------------------------------------- measures
def _mean(x: torch.Tensor) -> torch.Tensor:
    """Domain mean per sample: (B, ...) -> (B,). A mean, not a sum, so grids of any size compare."""
    return x.flatten(1).mean(1)


def _drift(
    before: torch.Tensor, after: torch.Tensor, scale_before: torch.Tensor, scale_after: torch.Tensor
) -> torch.Tensor:
    """-2 |after - before| / (scale_before + scale_after): the relative change, symmetric so it is
    bounded by 2 and a zero previous frame does not divide by zero. Vectors (B, k) use the L2 norm."""
    diff = after - before
    diff = diff.norm(dim=1) if diff.dim() > 1 else diff.abs()
    return -2 * diff / (scale_before + scale_after + EPS)


def _conserved(q0: torch.Tensor, q1: torch.Tensor) -> torch.Tensor:
    """Relative change of the domain integral of a density q, relative to int |q|."""
    return _drift(_mean(q0), _mean(q1), _mean(q0.abs()), _mean(q1.abs()))


def _no_growth(q0: torch.Tensor, q1: torch.Tensor) -> torch.Tensor:
    """Relative increase of int q (a decrease is allowed): for dissipated quantities."""
    m0, m1 = _mean(q0), _mean(q1)
    return -2 * torch.relu(m1 - m0) / (_mean(q0.abs()) + _mean(q1.abs()) + EPS)


def _positive(x: torch.Tensor) -> torch.Tensor:
    """Negative part as a fraction of the field's mass, in [-1, 0]."""
    return -_mean(torch.relu(-x)) / (_mean(x.abs()) + EPS)


def _bounds(x: torch.Tensor, lo, hi, scale) -> torch.Tensor:
    """Mean excursion of x outside [lo, hi] (floats or per-sample (B,) tensors), relative to scale."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    lo, hi, scale = (
        torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(shape) if torch.is_tensor(v) else v
        for v in (lo, hi, scale)
    )
    return -_mean((torch.relu(x - hi) + torch.relu(lo - x)) / (scale + EPS))


def _amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| per sample, (B,)."""
    return x.flatten(1).abs().amax(1)


def _shift(x: torch.Tensor, axis: int, lo: int, hi: int) -> torch.Tensor:
    """x[..., lo:size+hi, ...] on `axis` (hi <= 0), for stencils without wrap-around."""
    return x.narrow(axis, lo, x.shape[axis] - lo + hi)


# ------------------------------------------------------------------------------------- families
def _advection(p0: dict, p1: dict, h: list[float], dt: float | None) -> dict[str, torch.Tensor]:
    u0, u1 = p0["u"], p1["u"]
    return {"mass": _conserved(u0, u1), "l2": _conserved(u0**2, u1**2)}


def _burgers(p0: dict, p1: dict, h: list[float], dt: float | None) -> dict[str, torch.Tensor]:
    u0, u1 = p0["u"], p1["u"]
    # maximum principle: u stays within the previous frame's range (the generator's MUSCL-minmod
    # Godunov scheme and exact heat step keep it on the samples too); relative to max|u| of both
    lo, hi = u0.flatten(1).amin(1), u0.flatten(1).amax(1)
    return {
        "mass": _conserved(u0, u1),
        "energy_growth": _no_growth(u0**2, u1**2),
        "bounds": _bounds(u1, lo, hi, _amax(u0) + _amax(u1)),
    }


def _fisher(p0: dict, p1: dict, h: list[float], dt: float | None) -> dict[str, torch.Tensor]:
    u0, u1 = p0["u"], p1["u"]
    # u <= 1, and min u never decreases (diffusion obeys the minimum principle, the reaction is >= 0
    # on [0, 1]); int u may only grow: the sign flip of _no_growth
    lo = u0.flatten(1).amin(1).clamp(0.0, 1.0)
    return {"bounds": _bounds(u1, lo, 1.0, 1.0), "mass_growth": _no_growth(-u0, -u1)}


def _sorption(p0: dict, p1: dict, h: list[float], dt: float | None) -> dict[str, torch.Tensor]:
    return {"bounds": _bounds(p1["u"], 0.0, 1.0, 1.0)}


def _compressible(p0: dict, p1: dict, h: list[float], dt: float | None) -> dict[str, torch.Tensor]:
    names = [k for k in ("vx", "vy", "vz") if k in p0]

    def totals(f):
        """(mass density, momentum (B, d, ...), |rho| |v| (a scale, >= 0 for any input), energy density)."""
        rho, p = f["rho"], f["p"]
        v = torch.stack([f[k] for k in names], dim=1)
        speed2 = (v**2).sum(1)
        return rho, rho.unsqueeze(1) * v, rho.abs() * speed2.sqrt(), p / (GAMMA - 1) + 0.5 * rho * speed2

    rho0, m0, s0, e0 = totals(p0)
    rho1, m1, s1, e1 = totals(p1)
    # momentum is a vector that can integrate to ~0: relative to int rho |v|, not to |int rho v|
    momentum = _drift(m0.flatten(2).mean(2), m1.flatten(2).mean(2), _mean(s0), _mean(s1))
    return {
        "mass": _conserved(rho0, rho1),
        "momentum": momentum,
        "energy": _conserved(e0, e1),
        "positivity": _positive(rho1) + _positive(p1["p"]),
    }


def _darcy_operator(a: torch.Tensor, u: torch.Tensor, h: list[float]) -> torch.Tensor:
    """-div(a grad u) with the generator's finite-volume stencil: harmonic-mean face conductances
    (a jump in a is two cells in series) and u = 0 imposed on the box faces, half a cell out
    (conductance 2a there). a, u: (B, X, Y); returns (B, X, Y)."""
    out = torch.zeros_like(u)
    for axis in (1, 2):
        inner = (
            2 * _shift(a, axis, 1, 0) * _shift(a, axis, 0, -1) / (_shift(a, axis, 1, 0) + _shift(a, axis, 0, -1) + EPS)
        )
        first, last = a.narrow(axis, 0, 1), a.narrow(axis, a.shape[axis] - 1, 1)
        g = torch.cat([2 * first, inner, 2 * last], dim=axis)  # faces 0 .. n
        pad = [0, 0, 1, 1] if axis == 1 else [1, 1]  # zero ghost values: u = 0 on the faces
        flux = g * torch.diff(torch.nn.functional.pad(u, pad), dim=axis)  # g du, faces 0 .. n
        out = out - torch.diff(flux, dim=axis) / h[axis - 1] ** 2
    return out


def _darcy(p0: dict, p1: dict, h: list[float], dt: float | None) -> dict[str, torch.Tensor]:
    a, u = p0["u"], p1["u"]  # steady family: the "previous frame" holds the coefficient a
    r = _darcy_operator(a, u, h)
    # -div(a grad u) must be the constant beta everywhere. beta is not passed, so it is fitted on the
    # interior cells; their spread about it is the PDE residual. The edge cells' stencil holds
    # u = 0 on the faces, so their misfit is the boundary term (an offset of u shows only there).
    ring = torch.ones_like(u[:1], dtype=torch.bool)
    ring[:, 1:-1, 1:-1] = False
    inner = ~ring if min(u.shape[1:]) > 2 else ring  # a grid with no interior: fit on every cell
    r_in, r_ring = r[:, inner[0]], r[:, ring[0]]  # (B, cells)
    beta = r_in.mean(1, keepdim=True)

    def misfit(x):
        """RMS of x - beta relative to RMS x + |beta|: in [0, 1], 0 for an exact solution."""
        return -(x - beta).pow(2).mean(1).sqrt() / (x.pow(2).mean(1).sqrt() + beta[:, 0].abs() + EPS)

    return {"residual": misfit(r_in), "boundary": misfit(r_ring), "positivity": _positive(u)}


def _neumann_laplacian(u: torch.Tensor, h: list[float]) -> torch.Tensor:
    """5-point Laplacian of u (B, X, Y) with zero-flux walls (mirror ghost cells), the generator's stencil."""
    g = torch.nn.functional.pad(u.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
    return (g[:, 2:, 1:-1] + g[:, :-2, 1:-1] - 2 * u) / h[0] ** 2 + (g[:, 1:-1, 2:] + g[:, 1:-1, :-2] - 2 * u) / h[
        1
    ] ** 2


def _fhn_rate(f: dict) -> torch.Tensor:
    """FitzHugh-Nagumo's time derivative of (u, v), stacked on axis 1: (B, 2, X, Y)."""
    u, v, h = f["u"], f["v"], f["h"]
    return torch.stack(
        [FHN_DU * _neumann_laplacian(u, h) + u - u**3 - FHN_K - v, FHN_DV * _neumann_laplacian(v, h) + u - v], dim=1
    )


def _fitzhugh_nagumo(p0: dict, p1: dict, h: list[float], dt: float | None) -> dict[str, torch.Tensor]:
    prev = torch.stack([p0["u"], p0["v"]], dim=1)
    cand = torch.stack([p1["u"], p1["v"]], dim=1)
    # the square [-U, U]^2 is invariant (Chueh-Conley-Smoller; diffusion is diagonal) for every
    # U >= FHN_BOX, so the smallest one holding the previous frame must hold the next frame too
    box = _amax(prev).clamp(min=FHN_BOX)
    terms = {"bounds": _bounds(cand, -box, box, box)}
    if dt:
        # The box cannot tell -u from u (the system is odd up to k), nor a frame that changed too
        # little. The PDE over the step can: cand - prev = dt * (rate(prev) + rate(cand)) / 2
        # (trapezoid rule). Misfit relative to |change| + |dt * rate|, in [0, 1]: about 0.002 for
        # the synthetic truth once the initial noise has smoothed, 0.9+ for -u, 1 for persistence.
        change = cand - prev
        step = 0.5 * dt * (_fhn_rate({**p0, "h": h}) + _fhn_rate({**p1, "h": h}))
        norm = lambda x: x.flatten(1).norm(dim=1)  # noqa: E731
        terms["pde"] = -norm(change - step) / (norm(change) + norm(step) + EPS)
    return terms


def _swe(p0: dict, p1: dict, h: list[float], dt: float | None) -> dict[str, torch.Tensor]:
    return {"mass": _conserved(p0["h"], p1["h"]), "positivity": _positive(p1["h"])}


def _incompressible(p0: dict, p1: dict, h: list[float], dt: float | None) -> dict[str, torch.Tensor]:
    v = [p1["vx"], p1["vy"]]
    smoke_mass = _conserved(p0["smoke"], p1["smoke"])
    if min(v[0].shape[1:]) < 3:  # no interior point to take a central difference at
        return {"divergence": torch.zeros_like(smoke_mass), "smoke_mass": smoke_mass}

    # central differences on interior points only (no wrap-around), valid for periodic boxes and
    # for PDEBench's walls alike; every derivative is cropped to the same interior
    def d(f, axis):
        """Central difference of f (B, X, Y) along axis (1 or 2), on the (X-2, Y-2) interior."""
        other = 3 - axis
        return _shift((_shift(f, axis, 2, 0) - _shift(f, axis, 0, -2)) / (2 * h[axis - 1]), other, 1, -1)

    grads = [[d(v[b], a + 1) for a in range(2)] for b in range(2)]  # grads[b][a] = d v_b / d x_a
    div = grads[0][0] + grads[1][1]
    grad2 = sum(g**2 for row in grads for g in row)
    divergence = -_mean(div**2).sqrt() / (_mean(grad2).sqrt() + EPS)  # in [-sqrt 2, 0]
    return {"divergence": divergence, "smoke_mass": smoke_mass}


_TERMS = {
    "advection1d": _advection,
    "burgers1d": _burgers,
    "diff_react1d": _fisher,
    "diff_sorp1d": _sorption,
    "cfd1d": _compressible,
    "darcy2d": _darcy,
    "react_diff2d": _fitzhugh_nagumo,
    "swe2d": _swe,
    "cfd2d": _compressible,
    "ns_incom2d": _incompressible,
    "cfd3d": _compressible,
}


# ------------------------------------------------------------------------------------- public API
def _fields(family: Family, x: torch.Tensor, grid: tuple[int, ...], what: str) -> dict[str, torch.Tensor]:
    """(B, P, C) -> {channel name: (B, *grid)}, computed in at least float32."""
    want = (len(family.channels),)
    if x.dim() != 3 or x.shape[1] != math.prod(grid) or x.shape[2:] != want:
        raise ValueError(
            f"{family.name}: {what} has shape {tuple(x.shape)}; expected (B, {math.prod(grid)}, "
            f"{want[0]}) for grid {tuple(grid)} and channels {family.channels}"
        )
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    x = x.reshape(x.shape[0], *grid, want[0])
    return {name: x[..., i] for i, name in enumerate(family.channels)}


def reward_terms(
    family: Family,
    prev: torch.Tensor,
    cand: torch.Tensor,
    grid: tuple[int, ...],
    domain: tuple[float, float] | None = None,
    dt: float | None = None,
) -> dict[str, torch.Tensor]:
    """The named terms of ``family`` (each (B,), <= 0, 0 = no violation); they sum to
    :func:`physics_reward`. Empty for a family with no applicable term. ``dt``: the time between the
    frames, for terms that check the PDE over the step (react_diff2d's ``pde``); None leaves them out."""
    grid = tuple(int(n) for n in grid)
    if len(grid) != family.dim:
        raise ValueError(f"{family.name}: grid {grid} has {len(grid)} axes, the family is {family.dim}-D")
    if prev.shape != cand.shape:
        raise ValueError(f"{family.name}: prev {tuple(prev.shape)} and cand {tuple(cand.shape)} differ in shape")
    lo, hi = family.domain if domain is None else domain
    spacing = [(hi - lo) / n for n in grid]
    fields0, fields1 = _fields(family, prev, grid, "prev"), _fields(family, cand, grid, "cand")
    terms = _TERMS.get(family.name)
    return {} if terms is None else terms(fields0, fields1, spacing, dt)


def physics_reward(
    family: Family,
    prev: torch.Tensor,
    cand: torch.Tensor,
    grid: tuple[int, ...],
    domain: tuple[float, float] | None = None,
    dt: float | None = None,
) -> torch.Tensor:
    """Reward per sample (B,), higher is better, <= 0 (0 = no violation): the sum of
    :func:`reward_terms`. ``prev`` is the previous frame (darcy2d: the coefficient a), ``cand`` the
    candidate next frame (darcy2d: the solution u), both (B, P, C) in physical units; P is the C-order
    flattening of ``grid``, channels in ``family.channels`` order."""
    terms = reward_terms(family, prev, cand, grid, domain, dt)
    out = torch.zeros(cand.shape[0], dtype=torch.promote_types(cand.dtype, torch.float32), device=cand.device)
    for value in terms.values():
        out = out + value
    return out
