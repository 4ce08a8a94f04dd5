"""Readers for the three PDEBench storage layouts, returning trajectories as (T, *space, C).

Files are opened lazily and once per process (h5py handles cannot cross a fork), and each sample
is read as one contiguous block before strided subsampling in memory, which is what HDF5 chunks
favour. Every shape and key is checked when the reader is built, so a broken file fails at
dataset construction with the file and key named, never deep inside a DataLoader worker.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from ups.data.registry import Family


class DataFileError(ValueError):
    """A data file that cannot be read as the PDEBench layout it claims to be."""


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataFileError(f"{path}: not a readable HDF5 file ({err})") from None


def _need(node: h5py.Group, key: str, path: Path) -> h5py.Dataset:
    if key not in node:
        where = node.name if node.name != "/" else "the file root"
        raise DataFileError(f"{path}: missing key {key!r} in {where} (has: {', '.join(node.keys()) or 'nothing'})")
    return node[key]


class TrajectoryFile:
    """One PDEBench file seen as ``n_samples`` trajectories of shape (T, *space, C).

    ``rr``, ``rr_t`` and ``rb`` are PDEBench's ``reduced_resolution``, ``reduced_resolution_t`` and
    ``reduced_batch`` strides; ``max_samples`` caps the samples taken after striding.
    """

    def __init__(self, path: str | Path, family: Family, rr: int = 1, rr_t: int = 1, rb: int = 1,
                 max_samples: int | None = None):
        self.path, self.family = Path(path), family
        self.rr, self.rr_t, self.rb = rr, rr_t, rb
        self._handle: h5py.File | None = None
        self._pid = -1
        self.params = family.parse_params(self.path)
        with _open(self.path) as f:
            raw_n, raw_t, raw_space = self._inspect(f)
            self._raw_coords = self._read_coords(f, raw_space)
        n = len(range(0, raw_n, rb))
        self.n_samples = n if max_samples is None else min(n, max_samples)
        if self.n_samples < 1:
            raise DataFileError(f"{self.path}: holds no samples")
        self.space = tuple(len(range(0, s, rr)) for s in raw_space)
        self.n_steps = 2 if family.steady else len(range(0, raw_t, rr_t))
        self.channels = len(family.channels)

    # -- layout inspection -------------------------------------------------------------------
    def _inspect(self, f: h5py.File) -> tuple[int, int, tuple[int, ...]]:
        """Check keys and shapes; return raw (samples, time steps, spatial shape)."""
        fam, dim = self.family, self.family.dim
        if fam.layout == "tensor":
            shapes = {k: _need(f, k, self.path).shape for k in fam.fields}
            if fam.steady:
                shapes["nu"] = (shapes["tensor"][0], 1) + _need(f, "nu", self.path).shape[1:]
            want = 2 + dim
        elif fam.layout == "group":
            self._keys = sorted(f.keys())
            if not self._keys:
                raise DataFileError(f"{self.path}: no sample groups")
            data = _need(f[self._keys[0]], "data", self.path)
            if data.ndim != 2 + dim:
                raise DataFileError(f"{self.path}: {data.name} has shape {data.shape}, expected (T, {dim} spatial axes, C)")
            if data.shape[-1] != len(fam.channels):
                raise DataFileError(f"{self.path}: {data.name} has {data.shape[-1]} channels, {fam.name} has {len(fam.channels)}")
            return len(self._keys), data.shape[0], tuple(data.shape[1:-1])
        else:  # ns_incom: (B, T, X, Y, C) velocity and particles
            shapes = {k: _need(f, k, self.path).shape[:-1] for k in fam.fields}
            want = 2 + dim
        ref_key, ref = next(iter(shapes.items()))
        for key, shape in shapes.items():
            if len(shape) != want or shape != ref:
                raise DataFileError(f"{self.path}: dataset {key!r} has shape {shape}; expected {want} axes "
                                    f"(N, T, {dim} spatial) matching {ref_key!r} {ref}")
        return ref[0], ref[1], tuple(ref[2:])

    def _read_coords(self, f: h5py.File, raw_space: tuple[int, ...]) -> list[np.ndarray]:
        """Cell-centre coordinates per axis: from the file where stored, else uniform on the domain."""
        axes = "xyz"[: self.family.dim]
        coords = []
        for axis, size in zip(axes, raw_space):
            if self.family.layout == "tensor" and f"{axis}-coordinate" in f:
                c = np.asarray(f[f"{axis}-coordinate"][:size], dtype=np.float64)
            elif self.family.layout == "group" and f"grid/{axis}" in f[self._keys[0]]:
                c = np.asarray(f[self._keys[0]][f"grid/{axis}"][:size], dtype=np.float64)
            else:
                lo, hi = self.family.domain
                c = lo + (np.arange(size) + 0.5) * (hi - lo) / size
            if c.shape != (size,):
                raise DataFileError(f"{self.path}: {axis}-coordinate has {c.shape[0]} values for {size} grid points")
            coords.append(c)
        return coords

    # -- reading ----------------------------------------------------------------------------
    def coords(self) -> np.ndarray:
        """Physical coordinates of the (subsampled) grid, shape (*space, dim)."""
        axes = [c[:: self.rr] for c in self._raw_coords]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)

    def _file(self) -> h5py.File:
        # Reopen after a fork: a DataLoader worker must not reuse its parent's handle.
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = _open(self.path), os.getpid()
        return self._handle

    def read(self, i: int) -> np.ndarray:
        """Trajectory ``i`` (after striding) as float32 (T, *space, C)."""
        if not 0 <= i < self.n_samples:
            raise IndexError(f"{self.path}: sample {i} out of range 0..{self.n_samples - 1}")
        f, j, fam = self._file(), i * self.rb, self.family
        space = (slice(None, None, self.rr),) * fam.dim
        if fam.layout == "group":
            out = f[self._keys[j]]["data"][()][(slice(None, None, self.rr_t),) + space]
        elif fam.layout == "ns_incom":
            out = np.concatenate([f[k][j] for k in fam.fields], axis=-1)[(slice(None, None, self.rr_t),) + space]
        elif fam.steady:  # Darcy: [coefficient a, solution u] as two "frames", PDEBench's convention
            out = np.stack([f["nu"][j], f["tensor"][j][0]], axis=0)[(slice(None),) + space][..., None]
        else:
            out = np.stack([f[k][j] for k in fam.fields], axis=-1)[(slice(None, None, self.rr_t),) + space]
        return np.ascontiguousarray(out, dtype=np.float32)

    def dt(self) -> float:
        """Time between stored frames after ``rr_t`` (0 for steady problems)."""
        if self.family.steady:
            return 0.0
        f = self._file()
        if self.family.layout == "tensor" and "t-coordinate" in f:
            t = f["t-coordinate"][:2]
        elif self.family.layout == "group" and "grid/t" in f[self._keys[0]]:
            t = f[self._keys[0]]["grid/t"][:2]
        elif self.family.layout == "ns_incom" and "t" in f:
            t = f["t"][0, :2]
        else:
            return 1.0
        return float(t[1] - t[0]) * self.rr_t if len(t) > 1 else 1.0

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, -1  # handles are per process
        return state
