"""2D incompressible Navier-Stokes with smoke-driven random forcing (PDEBench "NS_Incom").

PDEBench (PhiFlow, `sim_ns_incomp_2d.py`) solves
    u_t + u.grad u = -grad p + nu Lap u + s f,   div u = 0,   s_t + u.grad s = 0,
nu = 0.01, with random smooth initial velocity and smoke s and a random force field f fixed
per sample (note the force is multiplied by the smoke density). Here the same equations
are solved pseudo-spectrally on the periodic unit square (PhiFlow's box uses ZERO velocity
walls; periodic keeps the solver a few lines) in vorticity form:
    w_t + u.grad w = nu Lap w + curl(s f),   u = (psi_y, -psi_x),  -Lap psi = w,
so the velocity is divergence free to round-off in the spectral sense. The smoke gets a
small diffusivity kappa = nu/4, standing in for the numerical diffusion of PhiFlow's
semi-Lagrangian advection (pure spectral advection would ring). Smoke starts in [0, 1]
(a density, so s f does not average out) and |f| <= 4, which keeps max |u| ~ 0.5-1 over
the whole span instead of decaying viscously. Time stepping: integrating
factor (exact viscous decay) with Heun, 2/3-rule dealiasing, dt from CFL 0.5.
Frames at t_k = k * 5/T (PDEBench: 1000 frames spanning [0, 5)). Layout C:
`ns_incom_inhom_2d_512-0.h5` with `velocity` (B,T,X,Y,2), `particles` (B,T,X,Y,1),
`force` (B,X,Y,2), `t` (B,T) and root attrs `config` (YAML) and `latestIndex`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import (
    F32,
    chunk_slices,
    file_rng,
    integrate,
    produce,
    random_field,
    sizes,
    to_yaml,
)

FILE_NAME = "ns_incom_inhom_2d_512-0.h5"
DEFAULTS = {"n_samples": 16, "nx": 32, "nt": 21}
NU = 0.01
KAPPA = NU / 4
FORCE_AMP = 4.0
T_SPAN = 5.0
CFL = 0.5
DT_MAX = 0.02


def wavenumbers(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(kx, ky, k^2, 2/3-rule mask) on the rfft2 grid of an n x n periodic unit square."""
    kx = 2 * np.pi * np.fft.fftfreq(n, 1.0 / n)[:, None]
    ky = 2 * np.pi * np.fft.rfftfreq(n, 1.0 / n)[None, :]
    k2 = kx**2 + ky**2
    kcut = 2 * np.pi * (n // 3)
    mask = (np.abs(kx) < kcut) & (np.abs(ky) < kcut)
    return kx, ky, k2, mask


def velocity(wh: np.ndarray, kx, ky, k2) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) from the vorticity spectrum via the stream function: u = psi_y, v = -psi_x."""
    psih = wh / np.where(k2 == 0, 1.0, k2)
    psih[..., 0, 0] = 0.0
    n = wh.shape[-2]
    return (np.fft.irfft2(1j * ky * psih, s=(n, n)), np.fft.irfft2(-1j * kx * psih, s=(n, n)))


def tendency(wh, sh, fx, fy, kx, ky, k2, mask):
    """Dealiased nonlinear + forcing tendencies (spectral) of vorticity and smoke."""
    n = wh.shape[-2]
    u, v = velocity(wh, kx, ky, k2)
    ifft = lambda a: np.fft.irfft2(a, s=(n, n))  # noqa: E731
    s = ifft(sh)
    adv_w = u * ifft(1j * kx * wh) + v * ifft(1j * ky * wh)
    adv_s = u * ifft(1j * kx * sh) + v * ifft(1j * ky * sh)
    curl = 1j * kx * np.fft.rfft2(s * fy) - 1j * ky * np.fft.rfft2(s * fx)
    return mask * (curl - np.fft.rfft2(adv_w)), mask * (-np.fft.rfft2(adv_s))


def solve(w0, s0, fx, fy, t_save):
    """Frames of (u, v, s), each (n, T, X, Y) float32, from vorticity w0, smoke s0, force."""
    n = w0.shape[-1]
    kx, ky, k2, mask = wavenumbers(n)
    dx = 1.0 / n

    def step(state, dt):
        """Advance the state by dt."""
        wh, sh = state
        ew, es = np.exp(-NU * k2 * dt), np.exp(-KAPPA * k2 * dt)
        n1w, n1s = tendency(wh, sh, fx, fy, kx, ky, k2, mask)
        w1, s1 = ew * (wh + dt * n1w), es * (sh + dt * n1s)
        n2w, n2s = tendency(w1, s1, fx, fy, kx, ky, k2, mask)
        return (ew * (wh + 0.5 * dt * n1w) + 0.5 * dt * n2w, es * (sh + 0.5 * dt * n1s) + 0.5 * dt * n2s)

    def max_dt(state):
        """Largest stable time step for the current state."""
        u, v = velocity(state[0], kx, ky, k2)
        return min(DT_MAX, CFL * dx / max(float(np.max(np.abs(u) + np.abs(v))), 1e-6))

    def observe(state):
        """The float32 frame to store for the current state."""
        u, v = velocity(state[0], kx, ky, k2)
        return np.stack([u, v, np.fft.irfft2(state[1], s=(n, n))]).astype(F32)

    state = (mask * np.fft.rfft2(w0), mask * np.fft.rfft2(s0))
    return np.stack(integrate(state, t_save, step, max_dt, observe), axis=2)  # (3, n, T, X, Y)


def initial_fields(rng: np.random.Generator, b: int, n: int):
    """Random smooth (vorticity, smoke in [0,1], fx, fy), each (b, n, n); initial max |u| = 1."""
    kx, ky, k2, _ = wavenumbers(n)
    w0 = random_field(rng, b, (n, n), kmax=4, slope=1.0)
    u, v = velocity(np.fft.rfft2(w0), kx, ky, k2)
    umax = np.sqrt(u**2 + v**2).max(axis=(1, 2))[:, None, None]
    w0 = w0 / np.maximum(umax, 1e-12)
    s0 = 0.5 * (1.0 + random_field(rng, b, (n, n), kmax=4))
    fx = FORCE_AMP * random_field(rng, b, (n, n), kmax=4)
    fy = FORCE_AMP * random_field(rng, b, (n, n), kmax=4)
    return w0, s0, fx, fy


def generate(out_dir, *, n_samples=None, nx=None, nt=None, seed=0, overwrite=False) -> list[Path]:
    """Write `ns_incom_inhom_2d_512-0.h5` holding all n_samples trajectories as one batch."""
    b, n, nt = sizes(DEFAULTS, n_samples, nx, nt)

    def writer(f):
        """Compute this file's samples and write them into the open HDF5 file f."""
        w0, s0, fx, fy = initial_fields(file_rng(seed, FILE_NAME), b, n)
        t = np.arange(nt) * (T_SPAN / nt)
        out = np.concatenate([solve(w0[c], s0[c], fx[c], fy[c], t) for c in chunk_slices(b, n * n)], axis=1)
        f.create_dataset("velocity", data=np.moveaxis(out[:2], 0, -1))
        f.create_dataset("particles", data=out[2][..., None])
        f.create_dataset("force", data=np.stack([fx, fy], axis=-1).astype(F32))
        f.create_dataset("t", data=np.repeat(t[None], b, axis=0).astype(F32))
        cfg = {
            "sim": {
                "NU": NU,
                "kappa": KAPPA,
                "grid_size": f"[{n}, {n}]",
                "n_batch": b,
                "n_frames": nt,
                "t_span": T_SPAN,
                "domain": "periodic unit square",
                "seed": seed,
            }
        }
        f.attrs["config"] = to_yaml(cfg)
        f.attrs["latestIndex"] = nt - 1

    return produce(out_dir, [(FILE_NAME, writer)], overwrite)
