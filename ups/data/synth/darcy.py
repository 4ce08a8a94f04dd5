"""2D steady Darcy flow -div(a grad u) = beta on (0,1)^2, u = 0 on the boundary (PDEBench "Darcy").

PDEBench reaches the steady state by running a time-dependent diffusion to convergence; here
the steady equation is solved directly with one sparse LU solve per sample (scipy.sparse), on
the cell centres with a 5-point finite-volume stencil:
  * interior faces use the harmonic mean of the two cell coefficients (the exact series
    conductance of two half cells, so a jump 1 -> 0.1 is handled consistently);
  * boundary faces impose u = 0 *on the face*, half a cell from the centre: conductance 2a/h.
The coefficient a is a smooth periodic Gaussian random field thresholded at 0 to {1.0, 0.1}.
Layout A: `tensor` (N,1,X,Y) = u, `nu` (N,X,Y) = a, `x-`/`y-coordinate` (X,),
`t-coordinate` (10,) (meaningless, kept because the real files have it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ._common import (
    cell_centres,
    file_rng,
    pick,
    produce,
    random_field,
    sizes,
    write_layout_a,
)

BETAS = [1.0]  # PDEBench has 0.01, 0.1, 1.0, 10.0, 100.0
DEFAULTS = {"n_samples": 128, "nx": 32}
A_HIGH, A_LOW = 1.0, 0.1


def file_name(beta: float) -> str:
    """PDEBench's training-file name for one forcing value beta."""
    return f"2D_DarcyFlow_beta{float(beta)}_Train.hdf5"


def coefficient(rng: np.random.Generator, n: int, nx: int) -> np.ndarray:
    """n binary coefficient fields a in {A_HIGH, A_LOW}, shape (n, nx, nx)."""
    # kmax/slope fixed (not tied to nx) so the geometry is the same at every resolution
    f = random_field(rng, n, (nx, nx), kmax=6, slope=2.0)
    return np.where(f > 0.0, A_HIGH, A_LOW)


def face_conductances(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Conductances (per h^2) of the x-faces (nx+1, ny) and y-faces (nx, ny+1) of one field a.

    Interior: harmonic mean 2 a1 a2/(a1 + a2). Boundary: 2 a (Dirichlet value on the face).
    """
    gx = np.empty((a.shape[0] + 1, a.shape[1]))
    gx[1:-1] = 2 * a[1:] * a[:-1] / (a[1:] + a[:-1])
    gx[0], gx[-1] = 2 * a[0], 2 * a[-1]
    gy = np.empty((a.shape[0], a.shape[1] + 1))
    gy[:, 1:-1] = 2 * a[:, 1:] * a[:, :-1] / (a[:, 1:] + a[:, :-1])
    gy[:, 0], gy[:, -1] = 2 * a[:, 0], 2 * a[:, -1]
    return gx, gy


def matrix(a: np.ndarray, h: float) -> sp.csr_matrix:
    """The SPD finite-volume matrix of -div(a grad .) with u = 0 on the faces of the box."""
    nx, ny = a.shape
    gx, gy = face_conductances(a)
    idx = np.arange(nx * ny).reshape(nx, ny)
    diag = (gx[:-1] + gx[1:] + gy[:, :-1] + gy[:, 1:]).ravel()
    rows = [idx.ravel(), idx[:-1].ravel(), idx[1:].ravel(), idx[:, :-1].ravel(), idx[:, 1:].ravel()]
    cols = [idx.ravel(), idx[1:].ravel(), idx[:-1].ravel(), idx[:, 1:].ravel(), idx[:, :-1].ravel()]
    vals = [diag, -gx[1:-1].ravel(), -gx[1:-1].ravel(), -gy[:, 1:-1].ravel(), -gy[:, 1:-1].ravel()]
    m = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(nx * ny, nx * ny))
    return (m / h**2).tocsc()


def solve(a: np.ndarray, beta: float) -> np.ndarray:
    """Solutions u (n, nx, ny) of -div(a grad u) = beta for coefficient fields a (n, nx, ny)."""
    n, nx, ny = a.shape
    h = 1.0 / nx
    rhs = np.full(nx * ny, float(beta))
    u = np.empty(a.shape)
    for i in range(n):
        u[i] = spla.spsolve(matrix(a[i], h), rhs).reshape(nx, ny)
    return u


def generate(out_dir, *, n_samples=None, nx=None, nt=None, seed=0, overwrite=False, betas=None) -> list[Path]:
    """Write one `2D_DarcyFlow_beta{beta}_Train.hdf5` per beta (default BETAS); nt is unused."""
    n, nx = sizes(DEFAULTS, n_samples, nx)
    jobs = []
    for beta in pick(betas, BETAS):
        name = file_name(beta)

        def writer(f, beta=float(beta), name=name):
            """Compute this file's samples and write them into the open HDF5 file f."""
            a = coefficient(file_rng(seed, name), n, nx)
            u = solve(a, beta)
            xc = cell_centres(0.0, 1.0, nx)
            write_layout_a(
                f,
                {"tensor": u[:, None], "nu": a},
                {"x-coordinate": xc, "y-coordinate": xc, "t-coordinate": np.arange(10, dtype=np.float32)},
            )

        jobs.append((name, writer))
    return produce(out_dir, jobs, overwrite)
