"""Turn a task's config into ready data: located files, splits, statistics, grid and conditioning."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ups.data.readers import DataFileError, TrajectoryFile
from ups.data.registry import COND_PARAMS, Family, get_family
from ups.data.stats import Stats, load_or_compute_stats

log = logging.getLogger(__name__)

SampleId = tuple[int, int]  # (file index within the task, sample index within the file)


def split_indices(n: int, layout: str, val_fraction: float, test_fraction: float) -> dict[str, list[int]]:
    """The documented split rule for one file of ``n`` samples.

    The test split is PDEBench's own, so scores compare with published ones: the first
    ``int(n * test_fraction)`` samples for single-file layouts, the last ones for the
    group-per-sample layout. Validation is the end of the remaining training part; train is the
    rest. Each split gets at least one sample, so a file needs three.
    """
    if n < 3:
        raise ValueError(f"{n} samples cannot be split into train, validation and test; at least 3 are needed")
    n_test = max(int(n * test_fraction), 1)
    n_val = max(int(n * val_fraction), 1)
    idx = list(range(n))
    test, rest = (idx[-n_test:], idx[:-n_test]) if layout == "group" and n_test else (idx[:n_test], idx[n_test:])
    train, val = rest[: len(rest) - n_val], rest[len(rest) - n_val:]
    return {"train": train, "val": val, "test": test}


@dataclass
class TaskData:
    """Everything the rest of UPS needs to know about one task's data."""

    name: str
    family: Family
    files: list[TrajectoryFile]
    splits: dict[str, list[SampleId]]
    stats: Stats
    initial_step: int
    coords: np.ndarray  # (P, dim) grid points scaled to [-1, 1]
    dt: float

    @property
    def channels(self) -> int:
        return len(self.family.channels)

    @property
    def n_steps(self) -> int:
        return self.files[0].n_steps

    def cond(self, file_idx: int) -> np.ndarray:
        """Conditioning vector [dt, log10 of each PDE parameter, zero padding]."""
        params = [np.log10(max(v, 1e-12)) for v in self.files[file_idx].params.values()]
        vec = np.zeros(1 + COND_PARAMS, dtype=np.float32)
        vec[0] = self.dt
        vec[1: 1 + len(params)] = params
        return vec


def find_files(data_dir: Path, patterns: list[str]) -> list[Path]:
    """Files matching any of the glob patterns, sorted so sample order is reproducible."""
    found = {p for pattern in patterns for p in data_dir.glob(pattern)}
    return sorted(p for p in found if not p.name.endswith(".tmp"))


def locate_or_generate(name: str, ds: Any, data_dir: Path, generate: bool) -> list[Path]:
    """The task's files; small synthetic ones are written first when absent and allowed."""
    paths = find_files(data_dir, list(ds.files))
    if paths:
        return paths
    if not generate:
        raise FileNotFoundError(
            f"task {name}: no files match {list(ds.files)} in {data_dir}. Point paths.data_dir at your "
            f"PDEBench download, or allow data.generate=true to write small synthetic files there.")
    from ups.data.synth import generate as synth_generate

    log.info("task %s: no data in %s, generating small synthetic PDEBench files", name, data_dir)
    s = ds.synth
    synth_generate(ds.family, data_dir, n_samples=s.n_samples, nx=s.nx, nt=s.nt, seed=s.seed)
    paths = find_files(data_dir, list(ds.files))
    if not paths:
        raise FileNotFoundError(f"task {name}: generated data does not match the patterns {list(ds.files)}")
    return paths


def build_task(name: str, ds: Any, data_cfg: Any, data_dir: Path, stats_dirs: list[Path]) -> TaskData:
    """Open, check and split one task's files and load its normalisation statistics."""
    family = get_family(ds.family)
    paths = locate_or_generate(name, ds, data_dir, data_cfg.generate)
    files = [TrajectoryFile(p, family, ds.reduced_resolution, ds.reduced_resolution_t, ds.reduced_batch,
                            ds.max_samples) for p in paths]
    first = files[0]
    for f in files[1:]:
        if (f.space, f.n_steps) != (first.space, first.n_steps):
            raise DataFileError(f"task {name}: {f.path.name} has grid {f.space} x {f.n_steps} steps but "
                                f"{first.path.name} has {first.space} x {first.n_steps}; one task needs one grid")
    if not family.steady and first.n_steps <= ds.initial_step:
        raise DataFileError(f"task {name}: {first.n_steps} time steps after reduced_resolution_t="
                            f"{ds.reduced_resolution_t} leave nothing to predict after initial_step={ds.initial_step}")
    splits: dict[str, list[SampleId]] = {"train": [], "val": [], "test": []}
    for k, f in enumerate(files):
        for split, ids in split_indices(f.n_samples, family.layout, data_cfg.val_fraction,
                                        data_cfg.test_fraction).items():
            splits[split].extend((k, i) for i in ids)
    stats = load_or_compute_stats(name, files, splits["train"], family.steady, stats_dirs)
    lo, hi = family.domain
    coords = (2.0 * (first.coords() - lo) / (hi - lo) - 1.0).reshape(-1, family.dim)
    initial_step = 1 if family.steady else ds.initial_step
    return TaskData(name, family, files, splits, stats, initial_step, coords.astype(np.float32), first.dt())
