"""Compressible Navier-Stokes finite-volume solver on periodic 1D/2D/3D boxes (PDEBench "CFD").

    rho_t + div(rho v) = 0
    (rho v)_t + div(rho v v + p I - sigma) = 0
    E_t + div((E + p) v - sigma . v) = 0,     E = p/(Gamma-1) + rho |v|^2 / 2,
    sigma = eta (grad v + grad v^T - 2/3 div v I) + zeta div v I,   Gamma = 5/3
(no heat conduction, as in PDEBench's CFD solver). The state is U = (rho, m_1..m_d, E) of
shape (2+d, n, *grid) with the d spatial axes last; every sample is advanced together.

Lie splitting per step of size dt (from CFL 0.4 on the inviscid waves):
  * inviscid part: MUSCL (minmod on primitives, so face states stay positive) + HLL flux,
    SSP-RK2;
  * viscous part: one explicit Runge-Kutta-Legendre (RKL1) super-step whose stage count
    comes from the diffusion limit (sub-cycling the cheap viscous stencil costs far less
    than shrinking dt for the Riemann solver too);
    skipped when eta, zeta < 1e-6, where the scheme's own numerical viscosity is far larger.
Every update is in flux form on a periodic grid, so total mass, momentum and energy are
conserved to round-off.
"""

from __future__ import annotations

import numpy as np

GAMMA = 5.0 / 3.0
CFL = 0.4
VISC_SAFETY = 0.8
INVISCID_BELOW = 1e-6


def prim_to_cons(rho: np.ndarray, vel: np.ndarray, p: np.ndarray) -> np.ndarray:
    """U = (rho, rho v, E) from density (n,*g), velocity (d,n,*g), pressure (n,*g)."""
    ekin = 0.5 * rho * np.sum(vel**2, axis=0)
    return np.concatenate([rho[None], rho[None] * vel, (p / (GAMMA - 1) + ekin)[None]])


def cons_to_prim(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rho, v (d,...), p) from the conserved state."""
    rho = u[0]
    vel = u[1:-1] / rho
    p = (GAMMA - 1) * (u[-1] - 0.5 * rho * np.sum(vel**2, axis=0))
    return rho, vel, p


def _minmod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Minmod limiter, written with min/max only (no sign/abs passes): the smaller of a, b
    in magnitude when they agree in sign, else 0."""
    return np.minimum(np.maximum(a, b), 0.0) + np.maximum(np.minimum(a, b), 0.0)


def _cons_and_flux(w: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(U, F_a(U), normal velocity, sound speed) of primitive face states w = (rho, v.., p)."""
    rho, vel, p = w[0], w[1:-1], w[-1]
    vn = vel[a]
    e = p / (GAMMA - 1) + 0.5 * rho * np.sum(vel * vel, axis=0)
    u = np.concatenate([rho[None], rho[None] * vel, e[None]])
    f = u * vn
    f[1 + a] += p
    f[-1] += p * vn
    return u, f, vn, np.sqrt(GAMMA * p / rho)


def hll_flux(wl: np.ndarray, wr: np.ndarray, a: int) -> np.ndarray:
    """HLL flux in direction a between primitive face states wl, wr = (rho, v.., p)."""
    ul, fl, vl, cl = _cons_and_flux(wl, a)
    ur, fr, vr, cr = _cons_and_flux(wr, a)
    sl = np.minimum(np.minimum(vl - cl, vr - cr), 0.0)
    sr = np.maximum(np.maximum(vl + cl, vr + cr), 0.0)
    # the clipped speeds make one formula cover the supersonic cases (F = fl or fr)
    inv = 1.0 / (sr - sl)
    return (sr * inv) * fl - (sl * inv) * fr + (sl * sr * inv) * (ur - ul)


def _wrap_pad(w: np.ndarray, axis: int, k: int) -> np.ndarray:
    """Periodic padding by k cells on both sides of one axis (cheaper than repeated rolls)."""
    n = w.shape[axis]
    return np.concatenate([w.take(range(n - k, n), axis=axis), w, w.take(range(k), axis=axis)], axis=axis)


def _sl(arr: np.ndarray, s: slice, axis: int) -> np.ndarray:
    """arr[..., s, ...] with the slice on `axis` (a view)."""
    idx = [slice(None)] * arr.ndim
    idx[axis] = s
    return arr[tuple(idx)]


def euler_rhs(u: np.ndarray, dx: float, d: int) -> np.ndarray:
    """Inviscid dU/dt: periodic MUSCL-HLL in each of the last d axes."""
    rho, vel, p = cons_to_prim(u)
    w = np.concatenate([rho[None], vel, p[None]])
    out = np.zeros_like(u)
    for a in range(d):
        ax = u.ndim - d + a
        wp = _wrap_pad(w, ax, 2)  # cells -2 .. L+1
        dw = np.diff(wp, axis=ax)
        s = _minmod(_sl(dw, slice(None, -1), ax), _sl(dw, slice(1, None), ax))  # cells -1 .. L
        wc = _sl(wp, slice(1, -1), ax)
        wl = _sl(wc + 0.5 * s, slice(None, -1), ax)  # left states of faces -1/2 .. L-1/2
        wr = _sl(wc - 0.5 * s, slice(1, None), ax)  # right states of the same faces
        out -= np.diff(hll_flux(wl, wr, a), axis=ax) / dx
    return out


def viscous_rhs(u: np.ndarray, dx: float, d: int, eta: float, zeta: float) -> np.ndarray:
    """Viscous dU/dt: compact face gradients in the normal direction, averaged central
    gradients tangentially; momentum flux -sigma, energy flux -sigma . v (periodic)."""
    rho, vel, _ = cons_to_prim(u)
    axes = [u.ndim - 1 - d + a for a in range(d)]  # spatial axes of (n, *grid) arrays
    cen = [
        [(np.roll(vel[b], -1, axes[c]) - np.roll(vel[b], 1, axes[c])) / (2 * dx) for c in range(d)] for b in range(d)
    ]
    out = np.zeros_like(u)
    for a in range(d):
        ax = axes[a]
        grad = [[None] * d for _ in range(d)]  # grad[b][c] = d v_b / d x_c on faces a+1/2
        for b in range(d):
            for c in range(d):
                grad[b][c] = (
                    (np.roll(vel[b], -1, ax) - vel[b]) / dx
                    if c == a
                    else 0.5 * (cen[b][c] + np.roll(cen[b][c], -1, ax))
                )
        div = sum(grad[c][c] for c in range(d))
        work = 0.0
        for b in range(d):
            sig = eta * (grad[b][a] + grad[a][b])
            if b == a:
                sig = sig + (zeta - 2.0 * eta / 3.0) * div
            vface = 0.5 * (vel[b] + np.roll(vel[b], -1, ax))
            out[1 + b] += (sig - np.roll(sig, 1, ax)) / dx
            work = work + sig * vface
        out[-1] += (work - np.roll(work, 1, ax)) / dx
    return out


def hyperbolic_dt(u: np.ndarray, dx: float) -> float:
    """CFL step: CFL * dx / sum over directions of max(|v_a| + c)."""
    rho, vel, p = cons_to_prim(u)
    c = np.sqrt(GAMMA * p / rho)
    return CFL * dx / sum(float(np.max(np.abs(v) + c)) for v in vel)


def viscous_dt(u: np.ndarray, dx: float, d: int, eta: float, zeta: float) -> float:
    """Forward-Euler diffusion limit of the viscous operator (longitudinal modes are the
    fastest: coefficient (4/3 eta + zeta)/rho, plus eta/rho per transverse direction)."""
    mu = (4.0 / 3.0 * eta + zeta) + (d - 1) * eta
    return VISC_SAFETY * dx**2 * float(np.min(u[0])) / (2.0 * d * max(mu, 1e-300))


def rkl1(u: np.ndarray, tau: float, s: int, rhs) -> np.ndarray:
    """s-stage first-order Runge-Kutta-Legendre super-step (Meyer, Balsara & Aslam 2014).

    Stable for tau up to (s^2 + s)/2 forward-Euler steps, so s stages replace ~s^2/2
    sub-steps of the parabolic operator. Stage weights sum to 1, so flux form (and with it
    exact conservation) is kept.
    """
    w1 = 2.0 / (s * s + s)
    y2, y1 = u, u + w1 * tau * rhs(u)
    for j in range(2, s + 1):
        mu, nu = (2 * j - 1) / j, (1 - j) / j
        y2, y1 = y1, mu * y1 + nu * y2 + (mu * w1 * tau) * rhs(y1)
    return y1


def step(u: np.ndarray, dt: float, dx: float, d: int, eta: float, zeta: float) -> np.ndarray:
    """One split step: SSP-RK2 inviscid update, then an RKL1 viscous super-step."""
    u1 = u + dt * euler_rhs(u, dx, d)
    u = 0.5 * (u + u1 + dt * euler_rhs(u1, dx, d))
    if max(eta, zeta) >= INVISCID_BELOW:
        ratio = dt / viscous_dt(u, dx, d, eta, zeta)
        s = max(1, int(np.ceil(0.5 * (np.sqrt(1.0 + 8.0 * ratio) - 1.0))))  # (s^2+s)/2 >= ratio
        u = rkl1(u, dt, s, lambda v: viscous_rhs(v, dx, d, eta, zeta))
    if not np.all(np.isfinite(u)) or np.min(u[0]) <= 0:
        raise FloatingPointError("compressible solver produced a non-finite or negative state")
    return u
