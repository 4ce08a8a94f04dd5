"""Per-channel normalisation statistics from the training split, stored beside the data.

The stored file is keyed by a hash of everything the numbers depend on (file names, sizes and
modification times, strides, split), so statistics for other data or another split are never
reused: a stale file is simply not found and the statistics are recomputed. A stored file that
cannot be parsed or does not fit the task (wrong channel count, NaN, std <= 0) is recomputed with a
warning. Statistics are never defaulted: there is no code path that normalises with mean 0 / std 1
in place of missing numbers; computing them from an empty split or from non-finite data is an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ups.data.readers import DataFileError, TrajectoryFile

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """Mean and std per channel, for input frames and for predicted frames.

    They differ only for steady problems (Darcy), where the input frame is the coefficient field and
    the predicted frame the solution.
    """

    in_mean: list[float]
    in_std: list[float]
    out_mean: list[float]
    out_std: list[float]

    def arrays(self) -> tuple[np.ndarray, ...]:
        """(in_mean, in_std, out_mean, out_std) as float32 arrays of one value per channel."""
        return tuple(np.asarray(v, dtype=np.float32) for v in (self.in_mean, self.in_std, self.out_mean, self.out_std))

    def problem(self, channels: int) -> str | None:
        """Why these numbers cannot normalise ``channels`` channels, or None when they can."""
        for key, values in asdict(self).items():
            if not isinstance(values, list) or len(values) != channels:
                return f"{key} has {values!r}, expected {channels} values"
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                return f"{key} is not finite: {values}"
            if key.endswith("std") and min(values) <= 0:
                return f"{key} is not positive: {values}"
        return None


class _Moments:
    """Running per-channel sums in float64, so millions of values do not lose precision."""

    def __init__(self, channels: int):
        self.n, self.s, self.s2 = 0, np.zeros(channels), np.zeros(channels)

    def add(self, x: np.ndarray) -> None:
        flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
        self.n += flat.shape[0]
        self.s += flat.sum(0)
        self.s2 += (flat**2).sum(0)

    def result(self) -> tuple[list[float], list[float]]:
        mean = self.s / self.n
        std = np.sqrt(np.maximum(self.s2 / self.n - mean**2, 0.0))
        return mean.tolist(), np.maximum(std, 1e-8).tolist()  # a constant channel must not divide by 0


def compute_stats(files: Sequence[TrajectoryFile], sample_ids: Sequence[tuple[int, int]], steady: bool) -> Stats:
    """Per-channel moments over every listed training trajectory, frame and grid point."""
    if not sample_ids:
        raise ValueError("cannot compute normalisation statistics from an empty training split")
    channels = files[0].channels
    inp, out = _Moments(channels), _Moments(channels)
    for file_idx, i in sample_ids:
        traj = files[file_idx].read(i)
        if steady:
            inp.add(traj[:1])
            out.add(traj[1:])
        else:
            inp.add(traj)
    in_mean, in_std = inp.result()
    out_mean, out_std = out.result() if steady else (in_mean, in_std)
    stats = Stats(in_mean, in_std, out_mean, out_std)
    problem = stats.problem(channels)
    if problem is not None:  # NaN/Inf in the data: ups.data.validate should have caught it first
        raise DataFileError(
            f"normalisation statistics of {', '.join(str(f.path) for f in files)} are unusable: "
            f"{problem}. Check the data for NaN/Inf or set data.nonfinite=skip."
        )
    return stats


def file_fingerprint(f: TrajectoryFile) -> str:
    """What a per-file result depends on: name, size, modification time, strides and the sample cap."""
    st = f.path.stat()
    return f"{f.path.name}|{st.st_size}|{st.st_mtime_ns}|{f.rr}|{f.rr_t}|{f.rb}|{f.n_samples}"


def stats_key(files: Sequence[TrajectoryFile], sample_ids: Sequence[tuple[int, int]]) -> str:
    """A hash of what the statistics depend on."""
    h = hashlib.sha256()
    for f in files:
        h.update(file_fingerprint(f).encode())
    h.update(json.dumps(sorted(sample_ids)).encode())
    return h.hexdigest()[:16]


def _load(path: Path, channels: int) -> Stats | None:
    """Stored statistics, or None (with a warning) when the file is unreadable or unusable."""
    try:
        stats = Stats(**json.loads(path.read_text()))
        problem = stats.problem(channels)
    except (OSError, ValueError, TypeError) as err:  # JSONDecodeError is a ValueError; TypeError: wrong keys
        problem = f"{type(err).__name__}: {err}"
    if problem is None:
        return stats
    log.warning("%s: corrupt normalisation statistics (%s); recomputing them", path, problem)
    return None


def cached_paths(name: str, store_dirs: Sequence[Path]) -> list[Path]:
    """Where a cache file called ``name`` would live in each store directory, in order of preference."""
    return [Path(d) / ".ups_stats" / name for d in store_dirs]


class CacheDirs(list):
    """Store directories, in order of preference, some of them only read (``read_only``)."""

    def __init__(self, dirs: Sequence[Path], read_only: Sequence[Path] = ()):
        super().__init__(Path(d) for d in dirs)
        self.read_only = {Path(d) for d in read_only}


def user_cache_dir() -> Path:
    """UPS's cache folder outside any data directory: ``$UPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/ups``,
    else ``~/.cache/ups``. Its files are keyed by the data's fingerprints, so one folder serves all data."""
    if os.environ.get("UPS_CACHE_DIR"):
        return Path(os.environ["UPS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ups"


def read_only_data_dir(data_dir: Path, store_dirs: Sequence[Path]) -> CacheDirs:
    """Store directories for a data directory UPS must not write into (one the user named): caches
    already in it are still read; new ones go to :func:`user_cache_dir`, else the next writable dir."""
    rest = [Path(d) for d in store_dirs if Path(d) != Path(data_dir)]
    return CacheDirs([Path(data_dir), user_cache_dir(), *rest], read_only=[data_dir])


def store_cached(name: str, text: str, store_dirs: Sequence[Path]) -> None:
    """Write ``text`` to the first writable store directory, atomically (a reader never sees half a file);
    a directory in ``store_dirs.read_only`` (:class:`CacheDirs`) is never written."""
    skip = getattr(store_dirs, "read_only", set())
    for path in cached_paths(name, [d for d in store_dirs if Path(d) not in skip]):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, path)
            return
        except OSError:  # e.g. a read-only data directory: try the next one
            continue


def load_or_compute_stats(
    task: str,
    files: Sequence[TrajectoryFile],
    sample_ids: Sequence[tuple[int, int]],
    steady: bool,
    store_dirs: Sequence[Path],
) -> Stats:
    """Read the stored statistics for exactly this data and split, or compute and store them.

    ``store_dirs`` are tried in order (the data directory first; a read-only one falls through to
    the next, e.g. the run directory).
    """
    name = f"{task}-{stats_key(files, sample_ids)}.json"
    for path in cached_paths(name, store_dirs):
        stats = _load(path, files[0].channels) if path.exists() else None
        if stats is not None:
            return stats
    stats = compute_stats(files, sample_ids, steady)
    store_cached(name, json.dumps(asdict(stats)), store_dirs)
    return stats
