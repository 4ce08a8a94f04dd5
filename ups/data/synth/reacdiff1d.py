"""1D Fisher-KPP u_t = nu u_xx + rho u(1-u), periodic on (0,1) (PDEBench "1D_ReacDiff").

Strang splitting, each sub-problem integrated exactly:
  * reaction: the logistic ODE has the closed form u e^{rho t} / (1 - u + u e^{rho t});
  * diffusion: the 3-point FV Laplacian in Fourier space (`periodic_heat`).
Both preserve [0, 1], so the solution stays in [0, 1] with no step restriction; the step
(<= 0.005) only bounds the O(dt^2) splitting error. The initial condition is PDEBench's
`init_multi` normalised to [0, 1]; t in [0, 1]. Layout A like Advection.
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
    normalise01,
    periodic_heat,
    pick,
    produce,
    sizes,
    write_layout_a,
)

PARAMS = [(0.5, 1.0)]  # (nu, rho); PDEBench: nu in {0.5,1,2,5}, rho in {1,2,5,10}
DEFAULTS = {"n_samples": 128, "nx": 128, "nt": 21}
T_END = 1.0
DT_MAX = 0.005


def file_name(nu: float, rho: float) -> str:
    """PDEBench's training-file name, e.g. ReacDiff_Nu0.5_Rho1.0.hdf5."""
    return f"ReacDiff_Nu{float(nu)}_Rho{float(rho)}.hdf5"


def logistic(u: np.ndarray, rho: float, dt: float) -> np.ndarray:
    """Exact solution after dt of u' = rho u (1 - u)."""
    e = np.exp(rho * dt)
    return u * e / (1.0 - u + u * e)


def solve(u0: np.ndarray, nu: float, rho: float, t_save: np.ndarray, dx: float) -> np.ndarray:
    """Frames (n, T, X) float32 of Fisher-KPP from u0 (n, X) at times t_save."""

    def step(u, dt):
        """Advance the state by dt."""
        u = logistic(u, rho, 0.5 * dt)
        u = periodic_heat(u, nu, dt, dx)
        return logistic(u, rho, 0.5 * dt)

    frames = integrate(
        u0.astype(np.float64), t_save, step, max_dt=lambda u: DT_MAX, observe=lambda u: u.astype(np.float32)
    )
    return np.stack(frames, axis=1)


def generate(out_dir, *, n_samples=None, nx=None, nt=None, seed=0, overwrite=False, params=None) -> list[Path]:
    """Write one `ReacDiff_Nu{nu}_Rho{rho}.hdf5` per (nu, rho) pair (default PARAMS)."""
    n, nx, nt = sizes(DEFAULTS, n_samples, nx, nt)
    jobs = []
    for nu, rho in pick(params, PARAMS):
        name = file_name(nu, rho)

        def writer(f, nu=float(nu), rho=float(rho), name=name):
            """Compute this file's samples and write them into the open HDF5 file f."""
            x = cell_centres(0.0, 1.0, nx)
            dt_save = T_END / (nt - 1)
            u0 = normalise01(init_multi_eval(init_multi_params(file_rng(seed, name), n), x))
            u = solve(u0, nu, rho, np.arange(nt) * dt_save, 1.0 / nx)
            write_layout_a(f, {"tensor": u}, {"x-coordinate": x, "t-coordinate": np.arange(nt + 1) * dt_save})

        jobs.append((name, writer))
    return produce(out_dir, jobs, overwrite)
