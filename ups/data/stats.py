"""Per-channel normalisation statistics from the training split, stored beside the data.

The stored file is keyed by a hash of everything the numbers depend on (file names, sizes and
modification times, strides, split), so statistics for other data or another split are never
reused: a stale file is simply not found and the statistics are recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ups.data.readers import TrajectoryFile


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
        return tuple(np.asarray(v, dtype=np.float32) for v in (self.in_mean, self.in_std, self.out_mean, self.out_std))


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
    return Stats(in_mean, in_std, out_mean, out_std)


def stats_key(files: Sequence[TrajectoryFile], sample_ids: Sequence[tuple[int, int]]) -> str:
    """A hash of what the statistics depend on."""
    h = hashlib.sha256()
    for f in files:
        st = f.path.stat()
        h.update(f"{f.path.name}|{st.st_size}|{st.st_mtime_ns}|{f.rr}|{f.rr_t}|{f.rb}|{f.n_samples}".encode())
    h.update(json.dumps(sorted(sample_ids)).encode())
    return h.hexdigest()[:16]


def load_or_compute_stats(task: str, files: Sequence[TrajectoryFile], sample_ids: Sequence[tuple[int, int]],
                          steady: bool, store_dirs: Sequence[Path]) -> Stats:
    """Read the stored statistics for exactly this data and split, or compute and store them.

    ``store_dirs`` are tried in order (the data directory first; a read-only one falls through to
    the next, e.g. the run directory).
    """
    name = f"{task}-{stats_key(files, sample_ids)}.json"
    for d in store_dirs:
        path = Path(d) / ".ups_stats" / name
        if path.exists():
            return Stats(**json.loads(path.read_text()))
    stats = compute_stats(files, sample_ids, steady)
    for d in store_dirs:
        path = Path(d) / ".ups_stats" / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(asdict(stats)))
            os.replace(tmp, path)  # atomic: a reader never sees half a file
            break
        except OSError:
            continue
    return stats
