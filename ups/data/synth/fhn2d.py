"""2D FitzHugh-Nagumo reaction-diffusion on (-1,1)^2, t in [0, 5] (PDEBench "2D_ReacDiff").

    u_t = D_u Lap u + u - u^3 - k - v,    v_t = D_v Lap v + u - v,
D_u = 1e-3, D_v = 5e-3, k = 5e-3, no-flux (Neumann) boundaries, u0, v0 ~ N(0, 1) per cell.
The Laplacian is the 5-point FV stencil with mirror ghost cells (ghost = edge value), i.e.
zero flux through every boundary face, so sum(Lap u) = 0 exactly. Classical RK4 in time
(PDEBench uses RK45 via solve_ivp) with dt from the diffusion limit and the reaction
Jacobian (1 - 3u^2 is large for the initial N(0,1) noise). Layout B: `2D_diff-react_NA_NA.h5`,
groups with lzf `data` (T, X, Y, 2) (channels u, v), `grid/x`, `grid/y`, `grid/t`, config.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import (
    cell_centres,
    chunk_slices,
    file_rng,
    integrate,
    produce,
    sizes,
    write_group,
)

FILE_NAME = "2D_diff-react_NA_NA.h5"
DEFAULTS = {"n_samples": 32, "nx": 32, "nt": 21}
T_END = 5.0
DU, DV, K = 1e-3, 5e-3, 5e-3
XL, XR = -1.0, 1.0
DT_MAX = 0.05


def neumann_laplacian(u: np.ndarray, dx: float) -> np.ndarray:
    """5-point Laplacian over the last two axes with zero-flux (mirror ghost) boundaries."""
    up = np.pad(u, [(0, 0)] * (u.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    return (up[..., 2:, 1:-1] + up[..., :-2, 1:-1] + up[..., 1:-1, 2:] + up[..., 1:-1, :-2] - 4 * u) / dx**2


def rhs(s: np.ndarray, dx: float) -> np.ndarray:
    """Time derivative of the state s = stack(u, v) of shape (2, n, X, Y)."""
    u, v = s
    return np.stack([DU * neumann_laplacian(u, dx) + u - u**3 - K - v, DV * neumann_laplacian(v, dx) + u - v])


def max_dt(s: np.ndarray, dx: float) -> float:
    """RK4-stable step (real-axis limit ~2.78, keep 1.5 / spectral radius bound), capped at
    DT_MAX so coarse grids stay accurate too."""
    lam = 8 * max(DU, DV) / dx**2 + 1.0 + 3 * float(np.max(s[0] ** 2)) + 1.0
    return min(1.5 / lam, DT_MAX)


def rk4(s: np.ndarray, dt: float, dx: float) -> np.ndarray:
    """One classical Runge-Kutta step."""
    k1 = rhs(s, dx)
    k2 = rhs(s + 0.5 * dt * k1, dx)
    k3 = rhs(s + 0.5 * dt * k2, dx)
    k4 = rhs(s + dt * k3, dx)
    return s + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def solve(s0: np.ndarray, t_save: np.ndarray, dx: float) -> np.ndarray:
    """Frames (n, T, X, Y, 2) float32 from the initial state s0 (2, n, X, Y), solved in
    cache-sized chunks of samples."""
    out = []
    for c in chunk_slices(s0.shape[1], s0[0, 0].size):
        frames = integrate(
            s0[:, c].astype(np.float64),
            t_save,
            lambda s, dt: rk4(s, dt, dx),
            lambda s: max_dt(s, dx),
            observe=lambda s: s.astype(np.float32),
        )
        out.append(np.stack(frames, axis=0))  # (T, 2, n, X, Y)
    return np.moveaxis(np.concatenate(out, axis=2), (0, 1), (-4, -1))  # -> (n, T, X, Y, 2)


def generate(out_dir, *, n_samples=None, nx=None, nt=None, seed=0, overwrite=False) -> list[Path]:
    """Write `2D_diff-react_NA_NA.h5` with n_samples groups."""
    n, nx, nt = sizes(DEFAULTS, n_samples, nx, nt)

    def writer(f):
        """Compute this file's samples and write them into the open HDF5 file f."""
        rng = file_rng(seed, FILE_NAME)
        x = cell_centres(XL, XR, nx)
        t = np.linspace(0.0, T_END, nt)
        data = solve(rng.standard_normal((2, n, nx, nx)), t, (XR - XL) / nx)
        for i in range(n):
            cfg = {
                "sim": {
                    "t": T_END,
                    "tdim": nt,
                    "x_left": XL,
                    "x_right": XR,
                    "y_bottom": XL,
                    "y_top": XR,
                    "xdim": nx,
                    "ydim": nx,
                    "Du": DU,
                    "Dv": DV,
                    "k": K,
                    "seed": i,
                }
            }
            write_group(f, f"{i:04d}", data[i], {"x": x, "y": x, "t": t}, cfg)

    return produce(out_dir, [(FILE_NAME, writer)], overwrite)
