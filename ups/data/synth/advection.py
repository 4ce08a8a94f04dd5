"""1D linear advection u_t + beta u_x = 0 on the periodic unit interval (PDEBench "Advection").

The solution is exact: u(x, t) = u0((x - beta t) mod 1), with u0 PDEBench's `init_multi`
initial condition evaluated analytically at the shifted positions (no interpolation error).
Time span [0, 2] as in PDEBench; `nt` frames at spacing 2/(nt-1). Layout A:
`tensor` (N, T, X), `x-coordinate` (X,), `t-coordinate` (T+1,).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import (
    cell_centres,
    file_rng,
    init_multi_eval,
    init_multi_params,
    pick,
    produce,
    sizes,
    write_layout_a,
)

BETAS = [0.4]  # PDEBench has 0.1, 0.2, 0.4, 0.7, 1.0, 2.0, 4.0, 7.0; one file by default
DEFAULTS = {"n_samples": 128, "nx": 128, "nt": 41}
T_END = 2.0


def file_name(beta: float) -> str:
    """PDEBench's file name for one beta (str(0.4) == '0.4', str(1.0) == '1.0')."""
    return f"1D_Advection_Sols_beta{float(beta)}.hdf5"


def solve(
    rng: np.random.Generator, n: int, nx: int, nt: int, beta: float, t_end: float = T_END
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Exact solutions for n random initial conditions.

    Returns (u (n, T, X) float32, x (X,), t (T+1,), the initial-condition parameters)."""
    x = cell_centres(0.0, 1.0, nx)
    dt = t_end / (nt - 1)
    t = np.arange(nt + 1) * dt  # PDEBench stores one more time than frames
    params = init_multi_params(rng, n)
    u = np.empty((n, nt, nx), dtype=np.float32)
    for it in range(nt):
        u[:, it] = init_multi_eval(params, x - beta * t[it])
    return u, x, t, params


def generate(out_dir, *, n_samples=None, nx=None, nt=None, seed=0, overwrite=False, betas=None) -> list[Path]:
    """Write one `1D_Advection_Sols_beta{beta}.hdf5` per beta (default BETAS)."""
    n, nx, nt = sizes(DEFAULTS, n_samples, nx, nt)
    jobs = []
    for beta in pick(betas, BETAS):
        name = file_name(beta)

        def writer(f, beta=float(beta), name=name):
            """Compute this file's samples and write them into the open HDF5 file f."""
            u, x, t, _ = solve(file_rng(seed, name), n, nx, nt, beta)
            write_layout_a(f, {"tensor": u}, {"x-coordinate": x, "t-coordinate": t})

        jobs.append((name, writer))
    return produce(out_dir, jobs, overwrite)
