"""Physics checks of the synthetic PDEBench generators (ups.data.synth), at tiny sizes.

Each test recomputes a property independently of the solver (its own stencil, an exact
solution, a conservation law), so a wrong sign, boundary or flux makes it fail.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ups.data.synth import advection, darcy, generate


def _read(path, *keys):
    with h5py.File(path, "r") as f:
        return [f[k][()] for k in keys]


# ------------------------------------------------------------------------------ advection
def test_advection_is_exact_shift_by_whole_cells():
    # beta * dt * nx = 0.5 * 0.25 * 64 = 8 cells per frame: the solution must be a pure roll
    u, x, t, _ = advection.solve(np.random.default_rng(3), 16, 64, 9, beta=0.5)
    assert t.shape == (10,) and np.allclose(np.diff(t), 0.25)
    for k in range(9):
        np.testing.assert_allclose(u[:, k], np.roll(u[:, 0], 8 * k, axis=-1), atol=2e-6)


def test_advection_file_matches_fourier_shift_and_conserves_mass(tmp_path):
    (path,) = generate("advection1d", tmp_path, n_samples=64, nx=64, nt=11)
    u, x, t = _read(path, "tensor", "x-coordinate", "t-coordinate")
    beta = 0.4
    uh0 = np.fft.rfft(u[:, 0].astype(np.float64), axis=-1)
    k = np.arange(uh0.shape[-1])
    # band-limited samples (no abs / window) are exactly represented by their Fourier modes
    smooth = np.abs(uh0[:, 9:]).max(axis=-1) < 1e-4 * np.abs(uh0).max(axis=-1)
    assert smooth.sum() >= 20
    for it in range(u.shape[1]):
        shifted = np.fft.irfft(uh0 * np.exp(-2j * np.pi * k * beta * t[it]), n=64, axis=-1)
        np.testing.assert_allclose(u[smooth, it], shifted[smooth], atol=2e-5)
    mass = u.astype(np.float64).sum(-1)
    scale = np.abs(u[:, 0]).sum(-1)
    assert np.all(np.abs(mass[smooth] - mass[smooth, :1]) <= 1e-5 * scale[smooth, None] + 1e-6)
    # kinked samples (|.|, window) only conserve the sampled sum up to the O(dx^2) quadrature error
    assert np.all(np.abs(mass - mass[:, :1]) <= 1e-2 * scale[:, None] + 1e-6)


# ------------------------------------------------------------------------------ darcy
def _darcy_residual(u, a, beta):
    """-div(a grad u) - beta with an independent ghost-cell stencil (u = 0 on the box faces)."""
    h = 1.0 / u.shape[-1]
    up = np.pad(u, ((0, 0), (1, 1), (1, 1)))
    up[:, 0, :], up[:, -1, :] = -up[:, 1, :], -up[:, -2, :]  # odd reflection: zero on the face
    up[:, :, 0], up[:, :, -1] = -up[:, :, 1], -up[:, :, -2]
    ap = np.pad(a, ((0, 0), (1, 1), (1, 1)), mode="edge")
    c = (slice(None), slice(1, -1), slice(1, -1))
    out = np.zeros_like(u)
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        nb = (slice(None), slice(1 + dx, up.shape[1] - 1 + dx), slice(1 + dy, up.shape[2] - 1 + dy))
        af = 2 * ap[c] * ap[nb] / (ap[c] + ap[nb])
        out += af * (up[c] - up[nb]) / h**2
    return out - beta


def test_darcy_solver_residual_and_positivity():
    a = darcy.coefficient(np.random.default_rng(0), 4, 24)
    assert set(np.unique(a)) == {0.1, 1.0}
    u = darcy.solve(a, 1.0)
    assert np.abs(_darcy_residual(u, a, 1.0)).max() < 1e-8
    assert u.min() > 0


def test_darcy_constant_coefficient_matches_series_solution():
    # -Lap u = 1 on the unit square, u = 0 on its boundary: double sine series at cell centres
    n = 32
    u = darcy.solve(np.ones((1, n, n)), 1.0)[0]
    x = (np.arange(n) + 0.5) / n
    m = np.arange(1, 80, 2)
    sx = np.sin(np.pi * m[:, None] * x[None, :])  # (M, n)
    coef = 16.0 / (np.pi**4 * m[:, None] * m[None, :] * (m[:, None] ** 2 + m[None, :] ** 2))
    exact = np.einsum("mn,mi,nj->ij", coef, sx, sx)
    # second order on the faces; a Dirichlet value at the cell centres would be off by ~6 %
    assert np.abs(u - exact).max() < 2e-3 * exact.max()


def test_darcy_file_residual_boundary_and_sign(tmp_path):
    (path,) = generate("darcy2d", tmp_path, n_samples=8, nx=24)
    u, a = _read(path, "tensor", "nu")
    assert u.shape == (8, 1, 24, 24) and a.shape == (8, 24, 24)
    u = u[:, 0].astype(np.float64)
    res = _darcy_residual(u, a.astype(np.float64), 1.0)
    assert np.abs(res).max() < 1e-3  # float32 storage limits this, a wrong stencil gives O(1)
    assert u.min() > 0

    # u = 0 on the faces: quadratic extrapolation of the three edge cells to the face is small
    # next to the edge values (~0.15 here, jumps in a included); a zero imposed half a cell
    # further out, at the ghost centre, gives ~0.55
    def face(v):  # v: (N, X, ...) with axis 1 the normal direction
        return (15 * v[:, 0] - 10 * v[:, 1] + 3 * v[:, 2]) / 8

    sides = [u, u[:, ::-1], u.transpose(0, 2, 1), u.transpose(0, 2, 1)[:, ::-1]]
    ratio = sum(np.abs(face(v)).sum() for v in sides) / sum(v[:, 0].sum() for v in sides)
    assert ratio < 0.3


# ------------------------------------------------------------------------------ burgers
def test_burgers_file_conserves_mass_and_dissipates_energy(tmp_path):
    (path,) = generate("burgers1d", tmp_path, n_samples=16, nx=64, nt=11)
    (u,) = _read(path, "tensor")
    u = u.astype(np.float64)
    mass = u.sum(-1)
    assert np.all(np.abs(mass - mass[:, :1]) <= 1e-5 * np.abs(u[:, 0]).sum(-1, keepdims=True))
    energy = (u**2).sum(-1)
    assert np.all(np.diff(energy, axis=1) <= 1e-6 * energy[:, :-1])  # viscous + entropy-stable
    assert energy[:, -1].mean() < 0.9 * energy[:, 0].mean()


def test_burgers_small_amplitude_decays_at_nu_over_pi():
    from ups.data.synth import burgers

    x = (np.arange(64) + 0.5) / 64
    u = burgers.solve(1e-4 * np.sin(2 * np.pi * x)[None], 0.1, np.array([0.0, 1.0]), 1 / 64)
    amp = np.abs(np.fft.rfft(u[0, -1].astype(np.float64))[1]) / 32 / 1e-4
    assert amp == pytest.approx(np.exp(-(0.1 / np.pi) * (2 * np.pi) ** 2), rel=5e-3)


# ------------------------------------------------------------------------------ 1D reaction-diff.
def test_reacdiff_bounds_logistic_and_diffusion():
    from ups.data.synth import reacdiff1d

    t = np.array([0.0, 0.5, 1.0])
    # spatially uniform data: pure logistic growth u e^{rho t} / (1 - u + u e^{rho t})
    u = reacdiff1d.solve(np.full((1, 16), 0.2), 0.5, 2.0, t, 1 / 16)[0, :, 0]
    e = np.exp(2.0 * t)
    np.testing.assert_allclose(u, 0.2 * e / (0.8 + 0.2 * e), rtol=1e-6)
    # no reaction: a Fourier mode decays with the FV Laplacian's symbol (periodic)
    x = (np.arange(32) + 0.5) / 32
    u = reacdiff1d.solve(0.5 + 0.1 * np.cos(2 * np.pi * x)[None], 0.01, 0.0, t, 1 / 32)
    rate = 0.01 * (4 * 32**2) * np.sin(np.pi / 32) ** 2
    exact = 0.1 * np.cos(np.pi / 32) * np.exp(-rate * t)
    np.testing.assert_allclose(u[0, :, 0] - 0.5, exact, atol=1e-6)


def test_reacdiff_file_in_unit_interval(tmp_path):
    (path,) = generate("diff_react1d", tmp_path, n_samples=8, nx=32, nt=5)
    (u,) = _read(path, "tensor")
    assert u.min() >= -1e-6 and u.max() <= 1 + 1e-6
    assert np.allclose(u[:, 0].min(-1), 0, atol=1e-6) and np.allclose(u[:, 0].max(-1), 1, atol=1e-6)


# ------------------------------------------------------------------------------ diffusion-sorption
def test_diff_sorp_boundaries_and_bounds(tmp_path):
    from ups.data.synth import diffsorp

    dx = 1 / 32
    # left ghost is the solubility 1: no flux for u = 1 at the left, inflow D/R (1-u)/dx^2 below
    assert diffsorp.rhs(np.ones((1, 32)), dx)[0, 0] == pytest.approx(0.0, abs=1e-12)
    r = diffsorp.rhs(np.full((1, 32), 0.5), dx)[0]
    inflow = 5e-4 / diffsorp.retardation(np.array(0.5)) * (1 - 0.5) / dx**2
    assert r[0] == pytest.approx(inflow, rel=1e-12)
    assert np.all(r[1:-1] == 0) and r[-1] < 0  # right (Cauchy) boundary drains
    (path,) = generate("diff_sorp1d", tmp_path, n_samples=6, nx=32, nt=11)
    with h5py.File(path, "r") as f:
        u = np.stack([f[k]["data"][()][..., 0] for k in sorted(f)])
        t = f["0000/grid/t"][()]
    assert t[0] == 0 and t[-1] == 500
    assert u.min() >= 0 and u.max() <= 1 + 1e-6
    assert np.all(np.diff(u[:, :, 0], axis=1) >= -1e-7)  # left cell fills up towards 1
    assert u[:, -1, 0].min() > 0.9
    np.testing.assert_allclose(u[:, 0], u[:, :1, :1].repeat(32, -1)[:, 0], atol=0)  # constant u0
    assert u[:, 0, 0].max() <= 0.2


# ------------------------------------------------------------------------------ FitzHugh-Nagumo
def test_neumann_laplacian_is_no_flux():
    from ups.data.synth.fhn2d import neumann_laplacian

    n, dx = 12, 2 / 12
    rng = np.random.default_rng(0)
    f = rng.standard_normal((3, n, n))
    assert np.abs(neumann_laplacian(f, dx).sum(axis=(1, 2))).max() < 1e-9 * np.abs(f).sum()
    # cos modes with zero normal derivative on the faces are exact eigenvectors (not so for
    # periodic or Dirichlet ghosts)
    i = np.arange(n) + 0.5
    for kx, ky in ((1, 0), (2, 3)):
        mode = np.cos(kx * np.pi * i / n)[:, None] * np.cos(ky * np.pi * i / n)[None, :]
        lam = -(4 / dx**2) * (np.sin(kx * np.pi / (2 * n)) ** 2 + np.sin(ky * np.pi / (2 * n)) ** 2)
        np.testing.assert_allclose(neumann_laplacian(mode, dx), lam * mode, atol=1e-9)


def test_fhn_uniform_state_follows_the_ode(tmp_path):
    from ups.data.synth import fhn2d

    t = np.array([0.0, 1.0, 2.0])
    s0 = np.stack([np.full((1, 6, 6), 0.5), np.full((1, 6, 6), -0.2)])
    out = fhn2d.solve(s0, t, 1 / 3)  # (1, T, X, Y, 2)
    assert np.ptp(out, axis=(2, 3)).max() < 1e-6  # no-flux walls keep it uniform
    from scipy.integrate import solve_ivp

    ref = solve_ivp(
        lambda _, y: [y[0] - y[0] ** 3 - fhn2d.K - y[1], y[0] - y[1]],
        (0, 2),
        [0.5, -0.2],
        t_eval=t,
        rtol=1e-10,
        atol=1e-12,
    ).y.T
    np.testing.assert_allclose(out[0, :, 0, 0], ref, atol=1e-5)
    (path,) = generate("react_diff2d", tmp_path, n_samples=2, nx=8, nt=3)
    with h5py.File(path, "r") as f:
        d0 = f["0000/data"][()]
    assert abs(d0[0].mean()) < 0.5 and 0.5 < d0[0].std() < 1.5  # N(0, 1) initial noise


# ------------------------------------------------------------------------------ shallow water
def test_swe_mass_symmetry_and_dam(tmp_path):
    import yaml

    (path,) = generate("swe2d", tmp_path, n_samples=3, nx=32, nt=11)
    with h5py.File(path, "r") as f:
        h = np.stack([f[k]["data"][()][..., 0] for k in sorted(f)]).astype(np.float64)
        radius = [yaml.safe_load(f[k].attrs["config"])["sim"]["dam_radius"] for k in sorted(f)]
        x, t = f["0000/grid/x"][()], f["0000/grid/t"][()]
    assert h.min() > 0 and np.abs(np.diff(h, axis=1)).max() > 0.1
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    for i, r in enumerate(radius):
        assert 0.3 <= r <= 0.7
        np.testing.assert_array_equal(h[i, 0], np.where(r2 <= r * r, 2.0, 1.0))
    # outflow walls see no flow before the wave arrives: the total depth is conserved
    mass = h.sum(axis=(2, 3))
    early = t <= 0.5 + 1e-6
    assert np.abs(mass[:, early] / mass[:, :1] - 1).max() < 1e-6
    assert np.abs(mass / mass[:, :1] - 1).max() < 1e-3
    # a radial dam centred on a symmetric grid stays symmetric under x<->y and x->-x
    np.testing.assert_allclose(h, h.transpose(0, 1, 3, 2), atol=1e-6)
    np.testing.assert_allclose(h, h[:, :, ::-1], atol=1e-6)


# ------------------------------------------------------------------------------ compressible NS
def _cfd_totals(path, d):
    """Per (sample, time): total mass, momentum (d, N, T), energy, and sum rho |v| as a scale."""
    names = ["Vx", "Vy", "Vz"][:d]
    rho, p, *vel = _read(path, "density", "pressure", *names)
    rho, p, vel = rho.astype(np.float64), p.astype(np.float64), np.stack(vel).astype(np.float64)
    axes = tuple(range(2, 2 + d))
    energy = p / (5 / 3 - 1) + 0.5 * rho * (vel**2).sum(0)
    vaxes = tuple(a + 1 for a in axes)  # spatial axes of the (d, N, T, ...) velocity stack
    return rho.sum(axes), (rho * vel).sum(vaxes), energy.sum(axes), (rho * np.abs(vel)).sum(vaxes)


@pytest.mark.parametrize("d,nx", [(1, 64), (2, 16), (3, 8)])
def test_cfd_periodic_conservation(tmp_path, d, nx):
    (path,) = generate(f"cfd{d}d", tmp_path, n_samples=2, nx=nx, nt=5)
    mass, mom, energy, scale = _cfd_totals(path, d)
    assert np.abs(mass / mass[:, :1] - 1).max() < 1e-6
    assert np.abs(energy / energy[:, :1] - 1).max() < 1e-5
    assert np.all(np.abs(mom - mom[:, :, :1]) <= 1e-5 * scale[:, :, :1] + 1e-6)
    (rho,) = _read(path, "density")
    assert rho.min() > 0 and np.abs(np.diff(rho, axis=1)).max() > 1e-3  # it does evolve


def test_viscous_operator_coefficients():
    from ups.data.synth import compressible as cs

    n, dx, eta, zeta = 32, 1 / 32, 0.1, 0.05
    x = (np.arange(n) + 0.5) * dx
    s = np.sin(2 * np.pi * x)[None, :, None] * np.ones((1, n, n))
    lap = (np.roll(s, -1, 1) - 2 * s + np.roll(s, 1, 1)) / dx**2
    one, zero = np.ones_like(s), np.zeros_like(s)
    # shear wave v_y(x): only m_y changes, at rate eta v_y''
    r = cs.viscous_rhs(cs.prim_to_cons(one, np.stack([zero, 1e-3 * s]), one), dx, 2, eta, zeta)
    np.testing.assert_allclose(r[2], eta * 1e-3 * lap, atol=1e-12)
    assert np.abs(r[:2]).max() == 0
    # longitudinal wave v_x(x): rate (4/3 eta + zeta) v_x''
    r = cs.viscous_rhs(cs.prim_to_cons(one, np.stack([1e-3 * s, zero]), one), dx, 2, eta, zeta)
    np.testing.assert_allclose(r[1], (4 / 3 * eta + zeta) * 1e-3 * lap, atol=1e-12)
    assert abs(r[-1].sum()) < 1e-12  # viscous work only moves energy around


# ------------------------------------------------------------------------------ incompressible NS
def test_ns_incom_is_divergence_free_and_moving(tmp_path):
    (path,) = generate("ns_incom2d", tmp_path, n_samples=2, nx=16, nt=4)
    v, s, t = _read(path, "velocity", "particles", "t")
    n = v.shape[2]
    k = 2 * np.pi * np.fft.fftfreq(n, 1 / n)
    uh, vh = np.fft.fft2(v[..., 0].astype(np.float64)), np.fft.fft2(v[..., 1].astype(np.float64))
    div = np.real(np.fft.ifft2(1j * k[:, None] * uh + 1j * k[None, :] * vh))
    grad = np.real(np.fft.ifft2(1j * k[:, None] * uh))
    assert np.abs(div).max() < 1e-5 * np.abs(grad).max()
    assert np.abs(v).max() > 0.1 and np.abs(np.diff(v, axis=1)).max() > 1e-2
    assert np.all(np.diff(t, axis=1) > 0) and t[0, 0] == 0
    assert s.min() > -0.2 and s.max() < 1.2  # smoke density in [0, 1] up to spectral ringing
