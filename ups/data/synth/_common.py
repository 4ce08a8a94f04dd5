"""Shared pieces of the synthetic PDEBench generators: grids, seeding, initial conditions,
atomic HDF5 writing, the PDEBench layouts and a small time-loop driver.

Everything here is numpy only; the solvers keep float64 internally and cast to float32 when a
frame is stored, as PDEBench does.
"""

from __future__ import annotations

import contextlib
import glob
import os
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from ups.data.readers import SYNTHETIC_ATTR

F32 = np.float32


def cell_centres(lo: float, hi: float, n: int) -> np.ndarray:
    """Cell centres x_i = lo + (i + 1/2) dx of n equal cells on (lo, hi), float64."""
    dx = (hi - lo) / n
    return lo + (np.arange(n) + 0.5) * dx


def file_rng(seed: int, name: str) -> np.random.Generator:
    """A Generator for one output file, deterministic in (seed, file name).

    The name is hashed with crc32 (stable across runs, unlike hash()) so two files of one
    family (e.g. two betas) get independent streams from the same user seed.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]))


def pick(value, default):
    """`value` unless it is None, else the family default (None means 'small default')."""
    return default if value is None else value


def sizes(defaults: dict, n_samples, nx, nt=None) -> tuple:
    """(n_samples, nx, nt) with the family's defaults for those left as None (nt omitted if it has none)."""
    out = (pick(n_samples, defaults["n_samples"]), pick(nx, defaults["nx"]))
    return out + (pick(nt, defaults["nt"]),) if "nt" in defaults else out


# ----------------------------------------------------------------------------------------
# PDEBench's 1D initial condition (data_gen_NLE/utils.py::init_multi), as explicit parameters
# so the advection generator can evaluate it exactly at shifted positions.
# ----------------------------------------------------------------------------------------


def init_multi_params(rng: np.random.Generator, n: int, k_tot: int = 4, n_modes: int = 2) -> dict:
    """Draw the random parameters of n PDEBench `init_multi` initial conditions."""
    selected = rng.integers(0, k_tot, size=(n, n_modes))
    # one-hot sum: a mode drawn twice gets weight 2, exactly as PDEBench's one_hot(...).sum()
    weight = np.zeros((n, k_tot))
    for j in range(n_modes):
        weight[np.arange(n), selected[:, j]] += 1.0
    return {
        "k": np.arange(1, k_tot + 1)[None, :] * weight,  # (n, k_tot) integer wavenumbers
        "amp": rng.uniform(0.0, 1.0, size=(n, k_tot)),
        "phs": rng.uniform(0.0, 2 * np.pi, size=(n, k_tot)),
        "use_abs": rng.random(n) < 0.1,
        "use_win": rng.random(n) < 0.1,
        "xl": rng.uniform(0.1, 0.45, size=n),
        "xr": rng.uniform(0.55, 0.9, size=n),
    }


def init_multi_eval(p: dict, x: np.ndarray, length: float = 1.0, trns: float = 0.01) -> np.ndarray:
    """Evaluate the initial conditions at positions x of shape (X,) or (n, X); returns (n, X).

    Unlike PDEBench (which divides by xc[-1]-xc[0]) the wavenumbers use the domain length so
    the initial condition is exactly periodic; that is what makes advection an exact shift.
    """
    x = np.broadcast_to(x, (p["amp"].shape[0], x.shape[-1]))
    phase = 2 * np.pi * p["k"][:, :, None] * x[:, None, :] / length + p["phs"][:, :, None]
    u = np.sum(p["amp"][:, :, None] * np.sin(phase), axis=1)
    u = np.where(p["use_abs"][:, None], np.abs(u), u)
    xm = np.mod(x, length)  # the window lives in one period; tanh tails are ~0 at its ends
    win = 0.5 * (np.tanh((xm - p["xl"][:, None]) / trns) - np.tanh((xm - p["xr"][:, None]) / trns))
    return np.where(p["use_win"][:, None], u * win, u)


def normalise01(u: np.ndarray) -> np.ndarray:
    """PDEBench's if_norm: shift each sample to min 0 and scale to max 1 (over the last axis)."""
    u = u - u.min(axis=-1, keepdims=True)
    return u / np.maximum(u.max(axis=-1, keepdims=True), 1e-12)


def random_field(
    rng: np.random.Generator, n: int, shape: Sequence[int], kmax: int = 4, slope: float = 0.0
) -> np.ndarray:
    """n smooth periodic random fields of `shape`, zero mean and max |f| = 1 per sample.

    Fourier coefficients are complex Gaussian for 0 < |k|_inf <= kmax, scaled by |k|^-slope,
    zero otherwise; inverse rFFT gives a real periodic field resolved on any grid > 2 kmax.
    """
    shape = tuple(int(s) for s in shape)
    kmax = min(kmax, min(shape) // 2 - 1)
    freqs = [np.fft.fftfreq(s, 1.0 / s) for s in shape[:-1]]
    freqs.append(np.fft.rfftfreq(shape[-1], 1.0 / shape[-1]))
    kk = np.meshgrid(*freqs, indexing="ij")
    kinf = np.max([np.abs(k) for k in kk], axis=0)
    kabs = np.sqrt(sum(k**2 for k in kk))
    mask = (kinf > 0) & (kinf <= kmax)
    scale = np.where(mask, np.maximum(kabs, 1.0) ** (-slope), 0.0)
    size = (n,) + kk[0].shape
    coef = (rng.standard_normal(size) + 1j * rng.standard_normal(size)) * scale
    axes = tuple(range(1, len(shape) + 1))
    f = np.fft.irfftn(coef, s=shape, axes=axes)
    f -= f.mean(axis=axes, keepdims=True)
    return f / np.maximum(np.abs(f).max(axis=axes, keepdims=True), 1e-12)


def periodic_heat(u: np.ndarray, diff: float, dt: float, dx: float) -> np.ndarray:
    """Exact time-dt solution of the semi-discrete periodic heat equation along the last axis.

    Uses the symbol of the 3-point finite-volume Laplacian, (4/dx^2) sin^2(k dx/2), so this is
    the exact integral of the FV diffusion operator: unconditionally stable, mass (k=0) kept
    exactly, and positivity/maximum principle preserved (the generator is an M-matrix).
    """
    n = u.shape[-1]
    k = 2 * np.pi * np.fft.rfftfreq(n, d=dx)
    sym = (4.0 / dx**2) * np.sin(0.5 * k * dx) ** 2
    return np.fft.irfft(np.fft.rfft(u, axis=-1) * np.exp(-diff * dt * sym), n=n, axis=-1)


def chunk_slices(n: int, cells_per_sample: int, target_cells: int = 8192) -> list[slice]:
    """Split n samples into groups of about target_cells grid cells.

    The explicit solvers are memory-bound numpy pipelines; keeping each temporary near L2
    cache size (~8k cells x a few variables x 8 bytes) runs ~3x faster than solving every
    sample at once. Samples are independent, so each chunk also gets its own CFL step.
    """
    size = max(1, target_cells // max(1, cells_per_sample))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ----------------------------------------------------------------------------------------
# Time stepping driver.
# ----------------------------------------------------------------------------------------


def integrate(state, t_save: np.ndarray, step: Callable, max_dt: Callable, observe: Callable) -> list:
    """Advance `state` through the output times t_save (t_save[0] is the initial time).

    step(state, dt) -> state; max_dt(state) -> stable dt (CFL / diffusion limit, re-evaluated
    every substep); observe(state) -> what to store. Each substep is the remaining time to the
    next frame split into ceil(remaining / max_dt) equal parts, so it never exceeds max_dt,
    frames land exactly on t_save, and no sliver steps occur. Returns one observation per time.
    """
    frames = [observe(state)]
    t = float(t_save[0])
    for t_next in t_save[1:]:
        t_next = float(t_next)
        while t_next - t > 1e-12 * max(1.0, abs(t_next)):
            dt_max = float(max_dt(state))
            if not np.isfinite(dt_max) or dt_max <= 0:
                raise FloatingPointError(f"non-positive or non-finite time step {dt_max} at t={t}")
            remaining = t_next - t
            dt = remaining / np.ceil(remaining / dt_max * (1 - 1e-12))
            state = step(state, dt)
            t += dt
        t = t_next
        frames.append(observe(state))
    return frames


# ----------------------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------------------


def to_yaml(d: dict, indent: int = 0) -> str:
    """Tiny YAML emitter for nested dicts of scalars (the group `config` attribute strings)."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out.append(" " * indent + f"{k}:\n" + to_yaml(v, indent + 2))
        else:
            out.append(" " * indent + f"{k}: {v}\n")
    return "".join(out)


STALE_AFTER_S = 60.0  # a temporary file of a live generation is written to at least this often


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_tmp(path: Path) -> list[Path]:
    """Delete the temporary files of ``path`` left by killed generations (``kill -9`` skips the
    ``finally`` that removes them): those whose process is gone and that were not written to for
    :data:`STALE_AFTER_S` (on a shared file system a pid of another host may look dead here; its
    live generation keeps the file fresh). Returns what was removed."""
    removed = []
    for tmp in path.parent.glob(f"{glob.escape(path.name)}.*-*.tmp"):
        pid = tmp.name[len(path.name) + 1 :].split("-", 1)[0]
        try:
            if pid.isdigit() and not _alive(int(pid)) and time.time() - tmp.stat().st_mtime > STALE_AFTER_S:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # another process removed it first
            continue
    return removed


@contextlib.contextmanager
def atomic_h5(path: Path, overwrite: bool = False) -> Iterator[h5py.File]:
    """Write a file under a temporary name of this process, then publish it under ``path``.

    A killed or failing generation never leaves a file under the final name, and two processes
    generating at once never touch each other's temporary files. Publishing never replaces what is
    there (a user's file, or a link to one): ``os.link`` fails on an existing name, and then the
    file another process published first is kept. Only ``overwrite`` (asked for explicitly)
    replaces. The file is marked as synthetic inside (``SYNTHETIC_ATTR``).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs[SYNTHETIC_ATTR] = "small synthetic data written by UPS (ups.data.synth), not PDEBench's"
            yield f
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process published the same file first: keep it
    finally:
        if tmp.exists():
            tmp.unlink()


def produce(out_dir, jobs: Sequence[tuple[str, Callable[[h5py.File], None]]], overwrite: bool = False) -> list[Path]:
    """Write each (file name, writer) job into out_dir; return all the paths.

    A file already present is kept unless overwrite is set, so a family whose files all exist
    costs nothing. Each writer receives an open h5py.File (written atomically).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, writer in jobs:
        path = out_dir / name
        remove_stale_tmp(path)  # the litter of a generation killed with -9
        if path.is_symlink() and not path.exists():
            raise FileNotFoundError(
                f"{path} is a link to {os.readlink(path)}, which does not exist (an unmounted "
                "share?); it is not replaced by synthetic data"
            )
        if overwrite or not path.exists():
            with atomic_h5(path, overwrite) as f:
                writer(f)
        paths.append(path)
    return paths


def write_layout_a(f: h5py.File, fields: dict, coords: dict) -> None:
    """PDEBench single-file layout: one float32 dataset per field and per coordinate."""
    for k, v in {**fields, **coords}.items():
        f.create_dataset(k, data=np.asarray(v, dtype=F32))


def write_group(
    f: h5py.File, name: str, data: np.ndarray, grid: dict, config: dict, compression: str | None = "lzf"
) -> None:
    """One sample of PDEBench's group-per-sample layout: data, grid/*, attrs['config']."""
    g = f.create_group(name)
    g.create_dataset("data", data=np.asarray(data, dtype=F32), compression=compression)
    for k, v in grid.items():
        g.create_dataset(f"grid/{k}", data=np.asarray(v, dtype=F32))
    g.attrs["config"] = to_yaml(config)
