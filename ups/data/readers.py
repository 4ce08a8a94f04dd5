"""Readers for the three PDEBench storage layouts, returning trajectories as (T, *space, C).

Files and their datasets are opened lazily and once per process (h5py handles cannot cross a
fork). A sample is read as whole frames: the time stride and a window's frame range are a hyperslab
selection (each selected frame is one contiguous block on disk, so ``reduced_resolution_t`` and a
short window also cut I/O), the spatial stride is applied in memory (a strided spatial selection
would turn one block into thousands of tiny reads). ``read_many`` reads many samples of a
single-file layout with one hyperslab per key and block of samples. Keys, shapes,
coordinates and the time step are checked when the reader is built, so a broken file fails at
dataset construction with the file and key named, never deep inside a DataLoader worker; the
deeper per-sample checks (readability, NaN/Inf) live in ``ups.data.validate``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from ups.data.registry import Family
from ups.data.symmetry import Move
from ups.errors import DataFileError  # noqa: F401 - defined in ups.errors, imported from here too

SYNTHETIC_ATTR = "ups_synthetic"  # root attribute of files UPS generates; PDEBench's loaders ignore it


def _open(path: Path) -> h5py.File:
    if not os.access(path, os.R_OK):  # h5py reports this as an unreadable file, which misleads
        raise DataFileError(f"{path}: permission denied; this user cannot read it (check its owner and mode)")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataFileError(
            f"{path}: not a readable HDF5 file: truncated, corrupted or not HDF5 ({err}). "
            f"Download or generate it again."
        ) from None


def _need(node: h5py.Group, key: str, path: Path) -> h5py.Dataset:
    if key not in node:
        where = node.name if node.name != "/" else "the file root"
        raise DataFileError(f"{path}: missing key {key!r} in {where} (has: {', '.join(node.keys()) or 'nothing'})")
    obj = node[key]
    if not isinstance(obj, h5py.Dataset):
        raise DataFileError(f"{path}: {obj.name!r} is a group, expected a dataset")
    return obj


class TrajectoryFile:
    """One PDEBench file seen as ``n_samples`` trajectories of shape (T, *space, C).

    ``rr``, ``rr_t`` and ``rb`` are PDEBench's ``reduced_resolution``, ``reduced_resolution_t`` and
    ``reduced_batch`` strides; ``max_samples`` caps the samples taken after striding. Sample ``i``
    is stored sample ``i * rb`` (for the batch-first NS-incompressible layout: batch entry
    ``i * rb`` of this file; a task's samples are then files x batch).
    """

    def __init__(
        self, path: str | Path, family: Family, rr: int = 1, rr_t: int = 1, rb: int = 1, max_samples: int | None = None
    ):
        self.path, self.family = Path(path), family
        self.rr, self.rr_t, self.rb, self.max_samples = rr, rr_t, rb, max_samples
        self._handle: h5py.File | None = None
        self._pid = -1
        self._datasets: dict[str, h5py.Dataset] = {}  # opened by _dataset, belong to _handle
        self._keys: list[str] = []
        self.params = family.parse_params(self.path)
        with _open(self.path) as f:
            self.synthetic = SYNTHETIC_ATTR in f.attrs  # written by ups.data.synth, not PDEBench's
            raw_n, raw_t, raw_space = self._inspect(f)
            self.stored_axes = self._read_coords(f, raw_space)  # per axis, before reduced_resolution
            self.raw_steps = raw_t
            self._dt = 0.0 if family.steady else self._read_dt(f, raw_t)
        n = len(range(0, raw_n, rb))
        self.n_samples = n if max_samples is None else min(n, max_samples)
        if self.n_samples < 1:
            raise DataFileError(f"{self.path}: holds no samples")
        self.space = tuple(len(range(0, s, rr)) for s in raw_space)
        self.raw_space = raw_space
        self.n_steps = 2 if family.steady else len(range(0, raw_t, rr_t))
        self.channels = len(family.channels)
        self._stat = self._identity()  # what the file was when checked; a read compares (check_unchanged)

    def _identity(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_size, st.st_mtime_ns, st.st_ino

    def check_unchanged(self) -> None:
        """Raise DataFileError if the file was truncated, rewritten or replaced since it was checked.

        HDF5 reads past a truncated end return zeros rather than fail, so a run would go on training
        on zeros; a stat per read (microseconds) catches it before the next batch is made of them.
        After :meth:`close` the file as it is then becomes the reference (a caller that closed it knows)."""
        if self._stat is None:
            self._stat = self._identity()
            return
        try:
            now = self._identity()
        except OSError as err:
            raise DataFileError(
                f"{self.path} disappeared while the run was reading it ({err.strerror}); "
                "stopping rather than training on partial data"
            ) from None
        if now != self._stat:
            (size, _, ino), (nsize, _, nino) = self._stat, now
            what = (
                f"its size went from {size} to {nsize} bytes"
                if nsize != size
                else "it was replaced by another file"
                if nino != ino
                else "it was rewritten (modification time changed)"
            )
            raise DataFileError(
                f"{self.path} changed while the run was reading it: {what}. Stopping rather than "
                "training on data that changed under the run (a cut file reads as zeros). Put the "
                "file back and rerun to resume from the last checkpoint, or start a new run "
                "(another paths.output_dir) on the new data"
            )

    # -- layout inspection -------------------------------------------------------------------
    def _inspect(self, f: h5py.File) -> tuple[int, int, tuple[int, ...]]:
        """Check keys and shapes; return raw (samples, time steps, spatial shape)."""
        fam, dim = self.family, self.family.dim
        if fam.layout == "tensor":
            shapes = {k: _need(f, k, self.path).shape for k in fam.fields}
            if fam.steady:
                t = shapes["tensor"]
                if len(t) != 2 + dim or t[1] < 1:
                    raise DataFileError(f"{self.path}: dataset 'tensor' has shape {t}; expected (N, 1, {dim} spatial)")
                shapes["nu"] = (t[0], 1) + _need(f, "nu", self.path).shape[1:]
            want = 2 + dim
        elif fam.layout == "group":
            self._keys = sorted(f.keys())
            if not self._keys:
                raise DataFileError(f"{self.path}: no sample groups")
            first = f[self._keys[0]]
            if not isinstance(first, h5py.Group):
                raise DataFileError(f"{self.path}: {first.name!r} is a dataset; {fam.name} stores one group per sample")
            data = _need(first, "data", self.path)
            self._check_group_data(data)
            return len(self._keys), data.shape[0], tuple(data.shape[1:-1])
        else:  # ns_incom: batch-first (B, T, X, Y, C) velocity and particles
            ds = {k: _need(f, k, self.path) for k in fam.fields}
            got = sum(d.shape[-1] for d in ds.values())
            if got != len(fam.channels):
                raise DataFileError(
                    f"{self.path}: {' + '.join(f'{k}{d.shape}' for k, d in ds.items())} give {got} "
                    f"channels; {fam.name} has {len(fam.channels)} ({', '.join(fam.channels)})"
                )
            shapes = {k: d.shape[:-1] for k, d in ds.items()}
            want = 2 + dim
        ref_key, ref = next(iter(shapes.items()))
        for key, shape in shapes.items():
            if len(shape) != want:
                raise DataFileError(
                    f"{self.path}: dataset {key!r} has shape {shape} ({len(shape)} axes); "
                    f"{fam.name} needs {want} axes (N, T, {dim} spatial)"
                )
            if shape != ref:
                raise DataFileError(
                    f"{self.path}: dataset {key!r} has shape {shape}, but {ref_key!r} has {ref}; "
                    f"every field of {fam.name} needs the same (N, T, {dim} spatial) shape"
                )
        return ref[0], ref[1], tuple(ref[2:])

    def _check_group_data(self, data: h5py.Dataset, ref: tuple[int, ...] | None = None) -> None:
        """One group's ``data``: (T, *space, C) with the family's channels, the same shape as ``ref``."""
        dim, fam = self.family.dim, self.family
        if data.ndim != 2 + dim:
            raise DataFileError(f"{self.path}: {data.name} has shape {data.shape}, expected (T, {dim} spatial axes, C)")
        if data.shape[-1] != len(fam.channels):
            raise DataFileError(
                f"{self.path}: {data.name} has {data.shape[-1]} channels, {fam.name} has "
                f"{len(fam.channels)} ({', '.join(fam.channels)})"
            )
        if ref is not None and data.shape != ref:
            raise DataFileError(f"{self.path}: {data.name} has shape {data.shape}, the first group {ref}")

    def _read_coords(self, f: h5py.File, raw_space: tuple[int, ...]) -> list[np.ndarray]:
        """Cell-centre coordinates per axis: from the file where stored, else uniform on the domain."""
        axes = "xyz"[: self.family.dim]
        coords = []
        for axis, size in zip(axes, raw_space):
            if self.family.layout == "tensor" and f"{axis}-coordinate" in f:
                key, node = f"{axis}-coordinate", f
            elif self.family.layout == "group" and f"grid/{axis}" in f[self._keys[0]]:
                key, node = f"grid/{axis}", f[self._keys[0]]
            else:  # NS-incom and diff-sorp's missing axes store no grid: PDEBench's domain, cell centres
                lo, hi = self.family.domain
                coords.append(lo + (np.arange(size) + 0.5) * (hi - lo) / size)
                continue
            c = np.asarray(node[key][:size], dtype=np.float64).reshape(-1)
            if c.shape != (size,):
                label = f"{node.name.strip('/')}/{key}".lstrip("/")
                raise DataFileError(f"{self.path}: {label} has {c.shape[0]} values for {size} grid points")
            coords.append(c)
        return coords

    def _read_dt(self, f: h5py.File, raw_t: int) -> float:
        """Spacing of the stored frames, times ``rr_t``; the time key is required (dt conditions the model)."""
        if self.family.layout == "tensor":
            t = _need(f, "t-coordinate", self.path)
        elif self.family.layout == "group":
            t = _need(f[self._keys[0]], "grid/t", self.path)
        else:
            t = _need(f, "t", self.path)
            if t.ndim != 2:
                raise DataFileError(f"{self.path}: dataset 't' has shape {t.shape}, expected (B, T)")
        key = t.name.lstrip("/")
        # PDEBench's single-file t-coordinate has one entry more than frames; fewer than T is broken
        if t.shape[-1] < raw_t or raw_t < 2:
            raise DataFileError(
                f"{self.path}: {key!r} has {t.shape[-1]} values for {raw_t} stored frames "
                f"(a time-dependent file needs at least 2 frames and one time per frame)"
            )
        t01 = np.asarray(t[0, :2] if t.ndim == 2 else t[:2], dtype=np.float64)
        dt = float(t01[1] - t01[0]) * self.rr_t
        if not np.isfinite(dt) or dt <= 0:
            raise DataFileError(f"{self.path}: {key!r} starts {t01.tolist()}: time must increase")
        return dt

    # -- reading ----------------------------------------------------------------------------
    def coords(self) -> np.ndarray:
        """Physical coordinates of the (subsampled) grid, shape (*space, dim)."""
        axes = [c[:: self.rr] for c in self.stored_axes]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).astype(np.float32)

    def _file(self) -> h5py.File:
        # Reopen after a fork: a DataLoader worker must not reuse its parent's handle.
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid, self._datasets = _open(self.path), os.getpid(), {}
        return self._handle

    def _dataset(self, key: str) -> h5py.Dataset:
        # Opening a dataset by name costs more than reading a window of a small one (~0.4 ms), so the
        # few keys of a single-file layout stay open. Not a group file's one per sample: an open
        # chunked dataset keeps its chunk cache (up to 1 MiB), which over thousands of groups is GBs.
        f = self._file()
        if self.family.layout == "group":
            return f[key]
        if key not in self._datasets:
            self._datasets[key] = f[key]
        return self._datasets[key]

    def sample_name(self, i: int) -> str:
        """How sample ``i`` (after striding) is addressed in the file, for messages."""
        j = i * self.rb
        if self.family.layout == "group" and self._keys:
            return f"sample {j} (group {self._keys[j]!r})"
        return f"sample {j}"

    def key_of(self, i: int, frame: int, channel: int) -> str:
        """The HDF5 dataset holding channel ``channel`` of frame ``frame`` of sample ``i``, for messages."""
        fam = self.family
        if fam.layout == "group":
            return f"{self._keys[i * self.rb]}/data" if self._keys else "data"
        if fam.steady:
            return "nu" if frame == 0 else "tensor"
        if fam.layout == "ns_incom":
            return "velocity" if channel < 2 else "particles"
        return fam.fields[channel]

    def stored_frame(self, frame: int) -> int:
        """Index in the file of frame ``frame`` after the time stride."""
        return frame if self.family.steady else frame * self.rr_t

    def read(self, i: int, start: int = 0, stop: int | None = None, move: Move | None = None) -> np.ndarray:
        """Trajectory ``i`` (strided) as float32 (T, *space, C), or its frames ``start:stop``; of a copy with ``move``.

        Frames are counted after the time stride; a window asks for its own frames only, and only
        those are read from disk (they are part of the hyperslab, not sliced after the read).
        """
        stop = self.n_steps if stop is None else stop
        if not 0 <= i < self.n_samples:
            raise IndexError(f"{self.path}: sample {i} out of range 0..{self.n_samples - 1}")
        if not 0 <= start < stop <= self.n_steps:
            raise IndexError(f"{self.path}: frames {start}:{stop} out of range 0..{self.n_steps}")
        self.check_unchanged()
        try:
            if self.family.steady:  # two "frames" from two keys; a window needs both anyway
                return self._assemble(self._fetch(i * self.rb, slice(None)), move)[start:stop]
            tsel = slice(start * self.rr_t, (stop - 1) * self.rr_t + 1, self.rr_t)
            return self._assemble(self._fetch(i * self.rb, tsel), move)
        except (OSError, KeyError, RuntimeError) as err:  # h5py's read errors: corrupt chunk, cut file
            raise DataFileError(
                f"{self.path}: {self.sample_name(i)} cannot be read ({err}); the file is "
                f"truncated or corrupted: download or generate it again"
            ) from None

    def read_many(self, indices: Sequence[int], max_block_bytes: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(i, read(i))`` for every index, in ascending order, with few large reads (:meth:`read_copies`)."""
        return ((i, traj) for i, _, traj in self.read_copies(indices, max_block_bytes))

    def read_copies(
        self, indices: Sequence[int], max_block_bytes: int, moves: Sequence[Move | None] = (None,)
    ) -> Iterator[tuple[int, Move | None, np.ndarray]]:
        """``(i, move, read(i, move=move))`` for every index and move, in ascending order of ``i``; each
        sample is read from disk once, whatever the number of moves. In the single-file layouts every field is read once per block of consecutive samples (one
        hyperslab for the block instead of one per sample); a block spans at most
        ``max_block_bytes`` of stored data (at least one sample), so the transient memory stays
        bounded whatever the file size. The group layout stores a sample per group: one read each.
        """
        wanted = sorted(set(indices))
        if wanted and not 0 <= wanted[0] <= wanted[-1] < self.n_samples:
            raise IndexError(f"{self.path}: samples {wanted[0]}..{wanted[-1]} out of range 0..{self.n_samples - 1}")
        group = self.family.layout == "group"
        per_sample = self.n_steps * int(np.prod(self.raw_space)) * self.channels * 4
        span = 1 if group else max(1, max_block_bytes // per_sample)  # samples per block, counting skipped ones
        tsel = slice(None) if self.family.steady else slice(None, None, self.rr_t)
        k = 0
        while k < len(wanted):
            block = [i for i in wanted[k:] if i < wanted[k] + span]
            k += len(block)
            rows = block[0] * self.rb if group else slice(block[0] * self.rb, block[-1] * self.rb + 1, self.rb)
            self.check_unchanged()
            try:
                parts = self._fetch(rows, tsel)
            except (OSError, KeyError, RuntimeError):  # one by one: the error names the sample; unwanted ones pass
                yield from ((i, m, self.read(i, move=m)) for i in block for m in moves)
                continue
            for i in block:
                own = parts if group else [p[i - block[0]] for p in parts]
                yield from ((i, m, self._assemble(own, m)) for m in moves)

    def _fetch(self, rows: int | slice, tsel: slice) -> list[np.ndarray]:
        """The stored arrays of sample(s) ``rows`` (stored indices), one per key, frames ``tsel``, full space.

        The time stride is a hyperslab (each frame is one contiguous block on disk, so it cuts
        I/O); the spatial stride is left to ``_assemble`` (in a selection it would turn a block
        into thousands of tiny reads).
        """
        fam, ds = self.family, self._dataset
        if fam.steady:  # Darcy: [coefficient a, solution u] as two "frames", PDEBench's convention
            return [ds("nu")[rows], ds("tensor")[rows, 0]]
        if fam.layout == "group":
            return [ds(f"{self._keys[rows]}/data")[tsel]]
        return [ds(k)[rows, tsel] for k in fam.fields]

    def _assemble(self, parts: list[np.ndarray], move: Move | None = None) -> np.ndarray:
        """One sample's (T, *space, C) float32 trajectory from its ``_fetch`` arrays, spatially strided;
        ``move`` (a rotation or reflection, :mod:`ups.data.symmetry`) acts on the stored grid first."""
        fam = self.family
        if fam.steady:
            out = np.stack(parts, axis=0)[..., None]
        elif fam.layout == "group":
            out = parts[0]
        elif fam.layout == "ns_incom":
            out = np.concatenate(parts, axis=-1)
        else:
            out = np.stack(parts, axis=-1)
        if move is not None:
            out = move(out)
        out = out[(slice(None),) + (slice(None, None, self.rr),) * fam.dim]
        return np.ascontiguousarray(out, dtype=np.float32)

    def probe(self) -> None:
        """Read the first and last value of every data key of the first and last sample.

        A few bytes per key, whatever the file size, yet they touch the start and the end of the
        stored data, where a cut-off download shows. DataFileError names the key when it fails.
        """
        f, fam = self._file(), self.family
        for j in sorted({0, (self.n_samples - 1) * self.rb}):
            if fam.layout == "group":
                nodes = {f"{self._keys[j]}/data": f[self._keys[j]].get("data")}
            else:
                nodes = {k: f.get(k) for k in fam.fields + (("nu",) if fam.steady else ())}
            for key, ds in nodes.items():
                try:
                    if not isinstance(ds, h5py.Dataset):
                        raise KeyError("missing")
                    lead = () if fam.layout == "group" else (j,)
                    rest = ds.ndim - len(lead)
                    ds[lead + (0,) * rest], ds[lead + (-1,) * rest]
                except (OSError, KeyError, ValueError, RuntimeError) as err:
                    raise DataFileError(
                        f"{self.path}: key {key!r} of {self.sample_name(j // self.rb)} cannot be "
                        f"read ({err}); the file is truncated or corrupted: download or generate it "
                        f"again"
                    ) from None

    def dt(self) -> float:
        """Time between frames after ``rr_t`` (0 for steady problems)."""
        return self._dt

    def close(self) -> None:
        """Close this process's handle (a forked child's inherited one is left to the parent)."""
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle, self._datasets = None, {}
        self._stat = None  # the next read takes the file as it is then as the reference

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handle"], state["_pid"], state["_datasets"] = None, -1, {}  # handles are per process
        return state
