"""Compressible NS generators for PDEBench's 1D_CFD, 2D_CFD and 3D_CFD (periodic boxes).

The solver is `compressible.py` (MUSCL-HLL + RKL1 viscous super-steps, Gamma = 5/3). Initial
conditions:
  * "Rand": rho = 1 + A_rho f, p = 1 + A_p g with A ~ U(0.1, 0.5) and f, g smooth random
    periodic fields (|k| <= 4, max |f| = 1); each velocity component a smooth random field,
    scaled so max |v| = M c0 with c0 = sqrt(Gamma) the reference sound speed. 1D uses M = 1
    (its file name carries no M).
  * "Turb" (2D/3D option): rho = p = 1 and a divergence-free broadband velocity field
    (|k| <= nx/4, amplitude ~ |k|^-(d+5/3)/2, i.e. a k^-5/3 energy spectrum), scaled to M.
Time span [0, 1] as PDEBench with nt frames spaced 1/(nt-1); the layout-A `t-coordinate`
has nt+1 entries. Domains: 1D (-1, 1), 2D (0, 1)^2, 3D (0, 1)^3. Fields are stored as
(N, T, *grid) float32 `density`, `pressure`, `Vx`[, `Vy`[, `Vz`]] plus coordinates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import compressible as cs
from ._common import (
    cell_centres,
    chunk_slices,
    file_rng,
    integrate,
    pick,
    produce,
    random_field,
    sizes,
    write_layout_a,
)

DEFAULTS = {
    1: {"n_samples": 64, "nx": 128, "nt": 21},
    2: {"n_samples": 32, "nx": 32, "nt": 21},
    3: {"n_samples": 8, "nx": 16, "nt": 11},
}
DOMAIN = {1: (-1.0, 1.0), 2: (0.0, 1.0), 3: (0.0, 1.0)}
T_END = 1.0
VEL_NAMES = ("Vx", "Vy", "Vz")
COORD_NAMES = ("x-coordinate", "y-coordinate", "z-coordinate")


def _fmt_1d(v: float) -> str:
    """PDEBench's 1D spelling of a viscosity: 0.1 -> '0.1', 1e-8 -> '1.e-8'."""
    if v >= 1e-3:
        return str(float(v))
    mant, exp = f"{v:.0e}".split("e")
    return f"{mant}.e{int(exp)}"


def file_name(d: int, variant: str = "rand", M: float = 1.0, eta: float = 0.1, zeta: float = 0.1) -> str:
    """The PDEBench training-file name of a CFD configuration."""
    kind = {"rand": "Rand", "turb": "Turb"}[variant]
    if d == 1:
        return f"1D_CFD_{kind}_Eta{_fmt_1d(eta)}_Zeta{_fmt_1d(zeta)}_periodic_Train.hdf5"
    if d == 2:
        # PDEBench's inviscid and turbulent 2D sets are the 512^2 ones; the name keeps the
        # tag even though the synthetic grid is smaller
        res = "512" if (variant == "turb" or max(eta, zeta) < 1e-6) else "128"
        return f"2D_CFD_{kind}_M{float(M)}_Eta{eta}_Zeta{zeta}_periodic_{res}_Train.hdf5"
    return f"3D_CFD_{kind}_M{float(M)}_Eta{eta}_Zeta{zeta}_periodic_Train.hdf5"


def _solenoidal(vel: np.ndarray) -> np.ndarray:
    """Leray projection (periodic, spectral) of vel (d, n, *grid) onto divergence-free fields."""
    d = vel.shape[0]
    shape = vel.shape[2:]
    axes = tuple(range(2, 2 + d))
    vh = np.fft.fftn(vel, axes=axes)
    k = np.meshgrid(*[np.fft.fftfreq(s) for s in shape], indexing="ij")
    k2 = sum(kk**2 for kk in k)
    k2[(0,) * d] = 1.0
    kdotv = sum(k[a] * vh[a] for a in range(d)) / k2
    vh = np.stack([vh[a] - k[a] * kdotv for a in range(d)])
    return np.real(np.fft.ifftn(vh, axes=axes))


def initial_state(
    rng: np.random.Generator, n: int, shape: tuple, M: float, variant: str = "rand"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rho, vel (d,n,*g), p) initial primitives for n samples on a grid of `shape`."""
    d = len(shape)
    if variant == "turb":
        rho = np.ones((n,) + shape)
        p = np.ones((n,) + shape)
        kmax = max(shape[0] // 4, 2)
        vel = np.stack([random_field(rng, n, shape, kmax=kmax, slope=(d + 5 / 3) / 2) for _ in range(d)])
        vel = _solenoidal(vel)
    else:
        amp = rng.uniform(0.1, 0.5, size=(2, n) + (1,) * d)
        rho = 1.0 + amp[0] * random_field(rng, n, shape, kmax=4)
        p = 1.0 + amp[1] * random_field(rng, n, shape, kmax=4)
        vel = np.stack([random_field(rng, n, shape, kmax=4) for _ in range(d)])
    speed = np.sqrt(np.sum(vel**2, axis=0))
    vmax = speed.reshape(n, -1).max(axis=1).reshape((n,) + (1,) * d)
    vel = vel * (M * np.sqrt(cs.GAMMA) / np.maximum(vmax, 1e-12))
    return rho, vel, p


def solve(rho, vel, p, t_save: np.ndarray, dx: float, eta: float, zeta: float) -> np.ndarray:
    """Primitive frames (2+d, n, T, *grid) float32 = (rho, v_1..v_d, p), solved in
    cache-sized chunks of samples."""
    return np.concatenate(
        [_solve(rho[s], vel[:, s], p[s], t_save, dx, eta, zeta) for s in chunk_slices(rho.shape[0], rho[0].size)],
        axis=1,
    )


def _solve(rho, vel, p, t_save: np.ndarray, dx: float, eta: float, zeta: float) -> np.ndarray:
    """`solve` for one chunk of samples."""
    d = vel.shape[0]

    def observe(u):
        """The float32 frame to store for the current state."""
        r, v, pr = cs.cons_to_prim(u)
        return np.concatenate([r[None], v, pr[None]]).astype(np.float32)

    frames = integrate(
        cs.prim_to_cons(rho, vel, p),
        t_save,
        lambda u, dt: cs.step(u, dt, dx, d, eta, zeta),
        lambda u: cs.hyperbolic_dt(u, dx),
        observe,
    )
    return np.stack(frames, axis=2)


def _generate(d: int, out_dir, n_samples, nx, nt, seed, overwrite, variant, M, eta, zeta) -> list[Path]:
    """Shared body of generate_1d/2d/3d: one file for one (variant, M, eta, zeta)."""
    n, nx, nt = sizes(DEFAULTS[d], n_samples, nx, nt)
    name = file_name(d, variant, M, eta, zeta)

    def writer(f):
        """Compute this file's samples and write them into the open HDF5 file f."""
        lo, hi = DOMAIN[d]
        rho, vel, p = initial_state(file_rng(seed, name), n, (nx,) * d, M, variant)
        dt_save = T_END / (nt - 1)
        w = solve(rho, vel, p, np.arange(nt) * dt_save, (hi - lo) / nx, eta, zeta)
        fields = {"density": w[0], "pressure": w[-1]}
        fields.update({VEL_NAMES[a]: w[1 + a] for a in range(d)})
        coords = {COORD_NAMES[a]: cell_centres(lo, hi, nx) for a in range(d)}
        coords["t-coordinate"] = np.arange(nt + 1) * dt_save
        write_layout_a(f, fields, coords)

    return produce(out_dir, [(name, writer)], overwrite)


def generate_1d(
    out_dir, *, n_samples=None, nx=None, nt=None, seed=0, overwrite=False, eta=0.1, zeta=0.1, M=1.0
) -> list[Path]:
    """Write `1D_CFD_Rand_Eta0.1_Zeta0.1_periodic_Train.hdf5` (x in (-1, 1))."""
    return _generate(1, out_dir, n_samples, nx, nt, seed, overwrite, "rand", M, eta, zeta)


def generate_2d(
    out_dir, *, n_samples=None, nx=None, nt=None, seed=0, overwrite=False, variant="rand", M=None, eta=None, zeta=None
) -> list[Path]:
    """Write `2D_CFD_Rand_M0.1_Eta0.1_Zeta0.1_periodic_128_Train.hdf5` by default;
    variant="turb" writes `2D_CFD_Turb_M0.1_Eta1e-08_Zeta1e-08_periodic_512_Train.hdf5`."""
    visc = 1e-8 if variant == "turb" else 0.1
    return _generate(
        2, out_dir, n_samples, nx, nt, seed, overwrite, variant, pick(M, 0.1), pick(eta, visc), pick(zeta, visc)
    )


def generate_3d(
    out_dir, *, n_samples=None, nx=None, nt=None, seed=0, overwrite=False, variant="rand", M=1.0, eta=1e-8, zeta=1e-8
) -> list[Path]:
    """Write `3D_CFD_Rand_M1.0_Eta1e-08_Zeta1e-08_periodic_Train.hdf5` (or the Turb one)."""
    return _generate(3, out_dir, n_samples, nx, nt, seed, overwrite, variant, M, eta, zeta)
