"""2D shallow-water radial dam break on (-2.5,2.5)^2, t in [0, 1] (PDEBench "SWE", PyClaw there).

    h_t + (hu)_x + (hv)_y = 0,  (hu)_t + (hu^2 + g h^2/2)_x + (huv)_y = 0,  (hv)_t likewise,
g = 1. h = 2 inside a circle of radius r ~ U(0.3, 0.7) centred at the origin (cell-centre
test, as PDEBench), h = 1 outside, zero momentum. Boundaries are zero-gradient outflow
(PyClaw's BC.extrap) via two edge-copied ghost cells. Finite volume: MUSCL (minmod on
h, u, v) + HLL fluxes, SSP-RK2, CFL 0.4. Mass only changes through boundary fluxes, which
are zero until the wave reaches the boundary (it does not by t = 1 for r <= 0.7).
Layout B: `2D_rdb_NA_NA.h5`, groups "0000".. with `data` (T, X, Y, 1) = h, `grid/x`,
`grid/y`, `grid/t`, attrs["config"] holding `sim: dam_radius`. At least 24 groups by default
(PDEBench's loader reads the grid from the hard-coded group "0023").
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

FILE_NAME = "2D_rdb_NA_NA.h5"
DEFAULTS = {"n_samples": 32, "nx": 32, "nt": 21}
T_END = 1.0
G = 1.0
XL, XR = -2.5, 2.5
CFL = 0.4


def _sl(arr: np.ndarray, s: slice, axis: int) -> np.ndarray:
    """arr[..., s, ...] with the slice on `axis`."""
    idx = [slice(None)] * arr.ndim
    idx[axis] = s
    return arr[tuple(idx)]


def _minmod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Minmod limiter: the smaller one-sided difference when they agree in sign, else 0."""
    return 0.5 * (np.sign(a) + np.sign(b)) * np.minimum(np.abs(a), np.abs(b))


def _flux(w: np.ndarray, normal: int) -> tuple[np.ndarray, np.ndarray]:
    """Conserved state and physical flux of primitives w = (h, u, v) in direction normal (0/1)."""
    h, u, v = w
    un = (u, v)[normal]
    q = np.stack([h, h * u, h * v])
    f = np.stack([h * un, h * u * un, h * v * un])
    f[1 + normal] += 0.5 * G * h**2
    return q, f


def hll(wl: np.ndarray, wr: np.ndarray, normal: int) -> np.ndarray:
    """HLL numerical flux between left/right primitive states."""
    ql, fl = _flux(wl, normal)
    qr, fr = _flux(wr, normal)
    cl, cr = np.sqrt(G * wl[0]), np.sqrt(G * wr[0])
    sl = np.minimum(np.minimum(wl[1 + normal] - cl, wr[1 + normal] - cr), 0.0)
    sr = np.maximum(np.maximum(wl[1 + normal] + cl, wr[1 + normal] + cr), 0.0)
    # the clipped speeds make one formula cover the supersonic cases (F = fl or fr)
    return (sr * fl - sl * fr + sl * sr * (qr - ql)) / (sr - sl)


def rhs(q: np.ndarray, dx: float) -> np.ndarray:
    """dq/dt of the conserved state q = (h, hu, hv) of shape (3, n, X, Y)."""
    w = np.stack([q[0], q[1] / q[0], q[2] / q[0]])
    out = np.zeros_like(q)
    for normal, axis in ((0, -2), (1, -1)):
        pad = [(0, 0)] * w.ndim
        pad[axis] = (2, 2)
        wp = np.pad(w, pad, mode="edge")  # zero-gradient ghost cells
        d = np.diff(wp, axis=axis)
        s = _minmod(_sl(d, slice(None, -1), axis), _sl(d, slice(1, None), axis))  # cells 1..X+2
        wc = _sl(wp, slice(1, -1), axis)
        wl = _sl(wc + 0.5 * s, slice(None, -1), axis)  # faces 0..X (physical faces)
        wr = _sl(wc - 0.5 * s, slice(1, None), axis)
        f = hll(wl, wr, normal)
        out -= np.diff(f, axis=axis) / dx
    return out


def max_dt(q: np.ndarray, dx: float) -> float:
    """CFL step from the fastest wave in either direction."""
    c = np.sqrt(G * q[0])
    sx = np.max(np.abs(q[1] / q[0]) + c)
    sy = np.max(np.abs(q[2] / q[0]) + c)
    return CFL * dx / (sx + sy)


def ssp_rk2(q: np.ndarray, dt: float, dx: float) -> np.ndarray:
    """Heun's SSP-RK2 step."""
    q1 = q + dt * rhs(q, dx)
    return 0.5 * (q + q1 + dt * rhs(q1, dx))


def initial_depth(radius: np.ndarray, x: np.ndarray) -> np.ndarray:
    """h0 (n, X, Y): 2 inside the dam circle (by cell centre), 1 outside."""
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    return np.where(r2[None] <= radius[:, None, None] ** 2, 2.0, 1.0)


def solve(h0: np.ndarray, t_save: np.ndarray, dx: float) -> np.ndarray:
    """Water depth frames (n, T, X, Y) float32 from depth h0 (n, X, Y) at rest (solved in
    cache-sized chunks of samples)."""
    out = []
    for c in chunk_slices(h0.shape[0], h0[0].size):
        q0 = np.stack([h0[c], np.zeros_like(h0[c]), np.zeros_like(h0[c])])
        frames = integrate(
            q0,
            t_save,
            lambda q, dt: ssp_rk2(q, dt, dx),
            lambda q: max_dt(q, dx),
            observe=lambda q: q[0].astype(np.float32),
        )
        out.append(np.stack(frames, axis=1))
    return np.concatenate(out, axis=0)


def generate(out_dir, *, n_samples=None, nx=None, nt=None, seed=0, overwrite=False) -> list[Path]:
    """Write `2D_rdb_NA_NA.h5` with n_samples groups (default 32 >= 24)."""
    n, nx, nt = sizes(DEFAULTS, n_samples, nx, nt)

    def writer(f):
        """Compute this file's samples and write them into the open HDF5 file f."""
        rng = file_rng(seed, FILE_NAME)
        x = cell_centres(XL, XR, nx)
        t = np.linspace(0.0, T_END, nt)
        radius = rng.uniform(0.3, 0.7, size=n)
        h = solve(initial_depth(radius, x), t, (XR - XL) / nx)
        for i in range(n):
            cfg = {
                "sim": {
                    "T_end": T_END,
                    "n_time_steps": nt - 1,
                    "xdim": nx,
                    "ydim": nx,
                    "gravity": G,
                    "dam_radius": float(radius[i]),
                    "inner_height": 2.0,
                    "x_left": XL,
                    "x_right": XR,
                    "y_bottom": XL,
                    "y_top": XR,
                    "seed": i,
                }
            }
            # PDEBench compresses the diff-sorp/diff-react data but not the SWE data
            write_group(f, f"{i:04d}", h[i][..., None], {"x": x, "y": x, "t": t}, cfg, compression=None)

    return produce(out_dir, [(FILE_NAME, writer)], overwrite)
