"""1D diffusion-sorption u_t = D/R(u) u_xx on (0,1), t in [0, 500] (PDEBench "Diff_Sorp").

R(u) = 1 + ((1-phi)/phi) rho_s k_f n_f (u + 1e-6)^(n_f - 1) is the Freundlich retardation
factor (the 1e-6 is PDEBench's guard against u^(-0.126) at u = 0). Boundaries are
discretised exactly as PDEBench's `sim_diff_sorp.py` does with ghost cells:
  * left:  ghost value = 1 (the solubility; "u(0, t) = 1");
  * right: ghost value = D (u[-2] - u[-1]) / dx (the Cauchy condition u = D u_x).
Explicit Euler on the 3-point FV Laplacian (PDEBench uses RK45 on the same semi-discrete
system); dt <= 0.45 dx^2 / max(D/R) keeps u in [0, 1] (convex update). Initial condition
u0 = constant ~ U(0, 0.2). Layout B: `1D_diff-sorp_NA_NA.h5`, groups "0000", ... with
lzf `data` (T, X, 1), `grid/x`, `grid/t`, attrs["config"].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import cell_centres, file_rng, integrate, produce, sizes, write_group

FILE_NAME = "1D_diff-sorp_NA_NA.h5"
DEFAULTS = {"n_samples": 32, "nx": 128, "nt": 51}
T_END = 500.0
CONST = {"D": 5e-4, "por": 0.29, "rho_s": 2880.0, "k_f": 3.5e-4, "n_f": 0.874, "sol": 1.0}


def retardation(u: np.ndarray) -> np.ndarray:
    """Freundlich retardation factor R(u) with PDEBench's constants."""
    c = CONST
    return 1.0 + (1 - c["por"]) / c["por"] * c["rho_s"] * c["k_f"] * c["n_f"] * (u + 1e-6) ** (c["n_f"] - 1)


def rhs(u: np.ndarray, dx: float) -> np.ndarray:
    """du/dt for cell values u (n, X) with PDEBench's ghost-cell boundary values."""
    d = CONST["D"]
    left = np.full(u.shape[:-1] + (1,), CONST["sol"])
    right = d * (u[..., -2:-1] - u[..., -1:]) / dx
    up = np.concatenate([left, u, right], axis=-1)
    lap = (up[..., 2:] - 2 * up[..., 1:-1] + up[..., :-2]) / dx**2
    return d / retardation(u) * lap


def solve(u0: np.ndarray, t_save: np.ndarray, dx: float) -> np.ndarray:
    """Frames (n, T, X) float32 from initial cell values u0 (n, X)."""

    def max_dt(u):
        """Largest stable time step for the current state."""
        # D/R is largest where u is largest; |right ghost factor| adds < 0.1 to the 2 of the stencil
        return 0.45 * dx**2 / (CONST["D"] / retardation(u).min()) / 1.1

    frames = integrate(
        u0.astype(np.float64), t_save, lambda u, dt: u + dt * rhs(u, dx), max_dt, observe=lambda u: u.astype(np.float32)
    )
    return np.stack(frames, axis=1)


def generate(out_dir, *, n_samples=None, nx=None, nt=None, seed=0, overwrite=False) -> list[Path]:
    """Write `1D_diff-sorp_NA_NA.h5` with n_samples groups."""
    n, nx, nt = sizes(DEFAULTS, n_samples, nx, nt)

    def writer(f):
        """Compute this file's samples and write them into the open HDF5 file f."""
        rng = file_rng(seed, FILE_NAME)
        x = cell_centres(0.0, 1.0, nx)
        t = np.linspace(0.0, T_END, nt)
        u0 = np.repeat(rng.uniform(0.0, 0.2, size=(n, 1)), nx, axis=1)
        u = solve(u0, t, 1.0 / nx)
        for i in range(n):
            cfg = {
                "sim": {
                    **CONST,
                    "t": T_END,
                    "tdim": nt,
                    "x_left": 0.0,
                    "x_right": 1.0,
                    "xdim": nx,
                    "seed": i,
                    "u0": float(u0[i, 0]),
                }
            }
            write_group(f, f"{i:04d}", u[i][..., None], {"x": x, "t": t}, cfg)

    return produce(out_dir, [(FILE_NAME, writer)], overwrite)
