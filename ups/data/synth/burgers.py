"""1D viscous Burgers u_t + (u^2/2)_x = (nu/pi) u_xx, periodic on (0,1) (PDEBench "Burgers").

Finite volume on cell centres, Strang split per step:
  * convection: MUSCL (minmod) reconstruction + exact Godunov flux for the convex flux u^2/2,
    SSP-RK2, dt from CFL 0.4 (so shocks at small nu stay monotone);
  * diffusion: the 3-point FV Laplacian integrated exactly in Fourier space
    (`periodic_heat`), so the diffusion limit dt < dx^2/2D never binds (at nu = 0.1 and 128
    cells it would force ~4x more steps).
Both parts are conservative, so sum_x u is constant to round-off. Same initial conditions
as Advection (`init_multi`), t in [0, 2]. Layout A like Advection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import (
    cell_centres,
    file_rng,
    init_multi_eval,
    init_multi_params,
    integrate,
    periodic_heat,
    pick,
    produce,
    sizes,
    write_layout_a,
)

NUS = [0.1]  # PDEBench: 0.001 ... 4.0
DEFAULTS = {"n_samples": 128, "nx": 128, "nt": 41}
T_END = 2.0
CFL = 0.4


def file_name(nu: float) -> str:
    """PDEBench's file name for one viscosity."""
    return f"1D_Burgers_Sols_Nu{float(nu)}.hdf5"


def minmod_slope(u: np.ndarray) -> np.ndarray:
    """Limited cell slope (times dx) along the last, periodic axis."""
    dl = u - np.roll(u, 1, axis=-1)
    dr = np.roll(u, -1, axis=-1) - u
    return 0.5 * (np.sign(dl) + np.sign(dr)) * np.minimum(np.abs(dl), np.abs(dr))


def godunov_flux(ul: np.ndarray, ur: np.ndarray) -> np.ndarray:
    """Exact Riemann flux of f(u) = u^2/2 at faces with left/right states ul, ur."""
    return np.maximum(0.5 * np.maximum(ul, 0.0) ** 2, 0.5 * np.minimum(ur, 0.0) ** 2)


def convection_rhs(u: np.ndarray, dx: float) -> np.ndarray:
    """-(F_{i+1/2} - F_{i-1/2})/dx with MUSCL-Godunov face fluxes (periodic)."""
    s = minmod_slope(u)
    ul = u + 0.5 * s  # left state at face i+1/2
    ur = np.roll(u - 0.5 * s, -1, axis=-1)  # right state at face i+1/2
    f = godunov_flux(ul, ur)
    return -(f - np.roll(f, 1, axis=-1)) / dx


def step(u: np.ndarray, dt: float, dx: float, diff: float) -> np.ndarray:
    """One Strang step: half diffusion, SSP-RK2 convection, half diffusion."""
    u = periodic_heat(u, diff, 0.5 * dt, dx)
    u1 = u + dt * convection_rhs(u, dx)
    u = 0.5 * (u + u1 + dt * convection_rhs(u1, dx))
    return periodic_heat(u, diff, 0.5 * dt, dx)


def solve(u0: np.ndarray, nu: float, t_save: np.ndarray, dx: float) -> np.ndarray:
    """Frames (n, T, X) float32 of the Burgers solution from u0 (n, X) at times t_save."""
    diff = nu / np.pi
    frames = integrate(
        u0.astype(np.float64),
        t_save,
        step=lambda u, dt: step(u, dt, dx, diff),
        max_dt=lambda u: CFL * dx / max(np.abs(u).max(), 1e-6),
        observe=lambda u: u.astype(np.float32),
    )
    return np.stack(frames, axis=1)


def generate(out_dir, *, n_samples=None, nx=None, nt=None, seed=0, overwrite=False, nus=None) -> list[Path]:
    """Write one `1D_Burgers_Sols_Nu{nu}.hdf5` per viscosity (default NUS)."""
    n, nx, nt = sizes(DEFAULTS, n_samples, nx, nt)
    jobs = []
    for nu in pick(nus, NUS):
        name = file_name(nu)

        def writer(f, nu=float(nu), name=name):
            """Compute this file's samples and write them into the open HDF5 file f."""
            x = cell_centres(0.0, 1.0, nx)
            dt_save = T_END / (nt - 1)
            u0 = init_multi_eval(init_multi_params(file_rng(seed, name), n), x)
            u = solve(u0, nu, np.arange(nt) * dt_save, 1.0 / nx)
            write_layout_a(f, {"tensor": u}, {"x-coordinate": x, "t-coordinate": np.arange(nt + 1) * dt_save})

        jobs.append((name, writer))
    return produce(out_dir, jobs, overwrite)
