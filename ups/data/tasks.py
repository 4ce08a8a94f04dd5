"""Turn a task's config into ready data: located files, splits, statistics, grid and conditioning.

Everything that can be wrong with the data is found here, in the main process, before any
DataLoader worker starts: missing files, unreadable or truncated files, missing keys, wrong shapes,
NaN/Inf samples (``ups.data.validate``), and unusable statistics.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from ups.data.readers import DataFileError, TrajectoryFile
from ups.data.registry import COND_DIM, Family, get_family
from ups.data.stats import Stats, load_or_compute_stats, read_only_data_dir
from ups.data.symmetry import Move, exact_moves
from ups.data.validate import NONFINITE_POLICIES, nonfinite_samples
from ups.errors import ConfigError
from ups.file_lock import exclusive

log = logging.getLogger(__name__)

SampleId = tuple[int, int]  # (file index within the task, sample index within the file)


def split_indices(n: int, layout: str, val_fraction: float, test_fraction: float) -> dict[str, list[int]]:
    """The documented split rule for one file of ``n`` samples.

    The test split is PDEBench's own, so scores compare with published ones: the first
    ``int(n * test_fraction)`` samples for single-file layouts (``FNODatasetSingle``), the samples
    from ``int(n * (1 - test_fraction))`` on for the group-per-sample layout (``FNODatasetMult``:
    5 of 48, where ``int(0.1 * 48)`` would give 4). Validation is the end of the remaining training
    part; train is the rest. Each split gets at least one sample, so a file needs three.
    """
    if n < 3:
        raise ValueError(f"{n} samples cannot be split into train, validation and test; at least 3 are needed")
    if layout == "group":
        n_test = max(n - int(n * (1 - test_fraction)), 1)
    else:
        n_test = max(int(n * test_fraction), 1)
    n_val = max(int(n * val_fraction), 1)
    idx = list(range(n))
    test, rest = (idx[-n_test:], idx[:-n_test]) if layout == "group" else (idx[:n_test], idx[n_test:])
    train, val = rest[: len(rest) - n_val], rest[len(rest) - n_val :]
    return {"train": train, "val": val, "test": test}


def make_splits(
    files: list[TrajectoryFile],
    layout: str,
    val_fraction: float,
    test_fraction: float,
    skipped: set[SampleId] = frozenset(),
) -> dict[str, list[SampleId]]:
    """Apply :func:`split_indices` per file, or across all files for NS-incom, then drop ``skipped``.

    A PDEBench NS-incom file holds a batch of only 4 samples, and the set is the files x batch; a
    per-file split would put a quarter of it in the test split, so it is split as one sequence
    (files in natural order) with the test split last, as PDEBench's other multi-sample .h5 loader
    does. Splitting happens on the stored indices before skipping, so leaving a sample out never
    moves another one between splits.
    """
    splits: dict[str, list[SampleId]] = {"train": [], "val": [], "test": []}
    if layout == "ns_incom":
        flat = [(k, i) for k, f in enumerate(files) for i in range(f.n_samples)]
        try:
            parts = split_indices(len(flat), "group", val_fraction, test_fraction)
        except ValueError as err:
            raise DataFileError(f"{', '.join(str(f.path) for f in files)}: {err}") from None
        for split, idx in parts.items():
            splits[split].extend(flat[j] for j in idx if flat[j] not in skipped)
        return splits
    for k, f in enumerate(files):
        try:
            parts = split_indices(f.n_samples, layout, val_fraction, test_fraction)
        except ValueError as err:
            raise DataFileError(f"{f.path}: {err}") from None
        for split, ids in parts.items():
            splits[split].extend((k, i) for i in ids if (k, i) not in skipped)
    return splits


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
    dt: float  # the first file's frame spacing; cond() uses each file's own
    skipped: list[SampleId] = field(default_factory=list)  # left out for NaN/Inf (data.nonfinite=skip)

    @property
    def channels(self) -> int:
        """Channels per frame."""
        return len(self.family.channels)

    @property
    def synthetic(self) -> bool:
        """Whether the task reads files UPS generated (marked inside), not PDEBench's."""
        return any(f.synthetic for f in self.files)

    @property
    def grid(self) -> tuple[int, ...]:
        """Spatial shape; ``coords`` and every frame's points are its C-order flattening."""
        return tuple(self.files[0].space)

    @property
    def n_steps(self) -> int:
        """Frames per trajectory after the time stride (2 for steady tasks: input, solution)."""
        return self.files[0].n_steps

    def copies(self) -> list[Move]:
        """The rotations and reflections whose copies of a sample are samples of the task too: those of
        its family's symmetry that map the stored grid onto itself (:mod:`ups.data.symmetry`)."""
        axes = [to_unit(np.asarray(a, dtype=np.float64), self.family.domain) for a in self.files[0].stored_axes]
        return exact_moves(self.family.symmetry, axes, self.name)

    def cond(self, file_idx: int) -> np.ndarray:
        """Conditioning vector [log10 dt, log10 of each PDE parameter, zero padding] of one file's samples.

        Logarithms, because dt spans 0.005 (1D CFD Shock) to 12.5 (diffusion-sorption) and the
        parameters several decades; a steady problem (dt = 0) gets 0.
        """
        params = [np.log10(max(v, 1e-12)) for v in self.files[file_idx].params.values()]
        vec = np.zeros(COND_DIM, dtype=np.float32)
        dt = self.files[file_idx].dt()  # per file: e.g. 1D CFD's Shock files are saved at another dt
        vec[0] = np.log10(dt) if dt > 0 else 0.0
        vec[1 : 1 + len(params)] = params
        return vec


def to_unit(x: np.ndarray, domain: tuple[float, float]) -> np.ndarray:
    """Coordinates on ``domain`` scaled to [-1, 1], as every task's ``coords`` are."""
    lo, hi = domain
    return 2.0 * (x - lo) / (hi - lo) - 1.0


def _natural(path: Path) -> tuple:
    # numbers compare as numbers, so ns_incom_inhom_2d_512-2.h5 comes before ...-10.h5
    parts = re.split(r"(\d+)", path.name)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts), path.name


def find_files(data_dir: Path, patterns: list[str]) -> list[Path]:
    """Files matching any of the glob patterns, in natural name order so sample order is reproducible.

    A matching link whose target is gone (files on an unmounted share) is an error, never skipped:
    skipping it would make the task look absent and invite generating data in its place.
    """
    found = {p for pattern in patterns for p in data_dir.glob(pattern) if not p.name.endswith(".tmp")}
    broken = sorted(str(p) for p in found if p.is_symlink() and not p.exists())
    if broken:
        raise DataFileError(
            f"{', '.join(broken)}: a link whose target does not exist (an unmounted share?); "
            "mount or fix it, or remove the link"
        )
    return sorted((p for p in found if p.is_file()), key=_natural)


DEFAULT_DATA_DIR = "data"  # paths.data_dir's default (without $UPS_DATA_DIR)


def generation_allowed(generate: bool | None, data_dir: str | Path) -> bool:
    """Whether absent files may be generated: ``data.generate`` when set, else only into the default ``data``.

    A directory the user named is theirs: a typo in it must not fill it with synthetic files
    named exactly like PDEBench's.
    """
    return bool(generate) if generate is not None else str(Path(data_dir)) == DEFAULT_DATA_DIR


def _generation_lock(data_dir: Path) -> contextlib.AbstractContextManager:
    """One generating process per data directory at a time; the next one waits, then finds the files."""
    return exclusive(data_dir / ".ups_generate.lock")


def _options(ds: Any) -> dict:
    """``synth.options`` as a plain dict (a DictConfig from Hydra, a dict in tests, absent in old configs)."""
    opts = getattr(ds.synth, "options", None) or {}
    return OmegaConf.to_container(opts, resolve=True) if OmegaConf.is_config(opts) else dict(opts)


def generate_command(ds: Any, data_dir: Path) -> str:
    """The shell command that writes a dataset's synthetic files at its configured sizes.

    The CLI writes a family as ``conf/task/<family>.yaml`` configures it; a dataset with its own
    ``synth.options`` (e.g. ns2d_turb's Turb variant) gets the equivalent ``python -c`` call.
    """
    sizes = {k: getattr(ds.synth, k) for k in ("n_samples", "nx", "nt") if getattr(ds.synth, k) is not None}
    options = _options(ds)
    if not options:
        return f"python -m ups.data.synth tasks={ds.family} out={data_dir}" + "".join(
            f" {k}={v}" for k, v in sizes.items()
        )
    kw = "".join(f", {k}={v!r}" for k, v in {**sizes, **options}.items())
    return f"python -c \"from ups.data.synth import generate; generate('{ds.family}', '{data_dir}'{kw})\""


def locate_or_generate(name: str, ds: Any, data_dir: Path, generate: bool) -> list[Path]:
    """The task's files; small synthetic ones are written first when absent and ``generate`` allows it."""
    if data_dir.exists() and not data_dir.is_dir():
        raise FileNotFoundError(f"task {name}: paths.data_dir={data_dir} is a file, not a directory")
    paths = find_files(data_dir, list(ds.files))
    if paths:
        return paths
    options = _options(ds)
    if not generate:
        where = (
            f"paths.data_dir={data_dir} does not exist"
            if not data_dir.exists()
            else f"no files match {list(ds.files)} in {data_dir}"
        )
        raise FileNotFoundError(
            f"task {name}: {where}. Either point paths.data_dir at the directory holding the PDEBench files under "
            f"their original names, or write small synthetic ones there with: {generate_command(ds, data_dir)} "
            f"(or run with data.generate=true; without it UPS generates only into the default directory "
            f"'{DEFAULT_DATA_DIR}'). See docs/data.md."
        )
    from ups.data.synth import generate as synth_generate

    with _generation_lock(data_dir):
        paths = find_files(data_dir, list(ds.files))  # another run may have written them while we waited
        if paths:
            return paths
        log.info("task %s: no data in %s, generating small synthetic PDEBench files", name, data_dir)
        s = ds.synth
        synth_generate(ds.family, data_dir, n_samples=s.n_samples, nx=s.nx, nt=s.nt, seed=s.seed, **options)
    paths = find_files(data_dir, list(ds.files))
    if not paths:
        raise FileNotFoundError(f"task {name}: generated data does not match the patterns {list(ds.files)}")
    return paths


def build_task(name: str, ds: Any, data_cfg: Any, data_dir: Path, stats_dirs: list[Path]) -> TaskData:
    """Open, check and split one task's files and load its normalisation statistics.

    Raises DataFileError (file and key named) for unreadable, truncated or malformed files and for
    samples holding NaN/Inf unless ``data.nonfinite=skip``; FileNotFoundError, with how to generate
    or point at data, when the files are absent and ``data.generate=false``.
    """
    policy = getattr(data_cfg, "nonfinite", "error")
    if policy not in NONFINITE_POLICIES:
        raise ConfigError(f"data.nonfinite={policy!r} is not one of {', '.join(NONFINITE_POLICIES)}")
    family = get_family(ds.family)
    generate = generation_allowed(data_cfg.generate, data_dir)
    paths = locate_or_generate(name, ds, data_dir, generate)
    if not generate:  # a data directory UPS may not generate into is only read: its caches go elsewhere
        stats_dirs = read_only_data_dir(data_dir, stats_dirs)
    files = [
        TrajectoryFile(p, family, ds.reduced_resolution, ds.reduced_resolution_t, ds.reduced_batch, ds.max_samples)
        for p in paths
    ]
    first = files[0]
    for f in files[1:]:
        if (f.space, f.n_steps) != (first.space, first.n_steps):
            raise DataFileError(
                f"task {name}: {f.path.name} has grid {f.space} x {f.n_steps} steps but "
                f"{first.path.name} has {first.space} x {first.n_steps}; one task needs one grid"
            )
    if not family.steady and first.n_steps <= ds.initial_step:
        raise DataFileError(
            f"task {name}: {first.n_steps} time steps after reduced_resolution_t="
            f"{ds.reduced_resolution_t} leave nothing to predict after initial_step={ds.initial_step}"
        )
    skipped = nonfinite_samples(name, files, stats_dirs, policy)
    splits = make_splits(files, family.layout, data_cfg.val_fraction, data_cfg.test_fraction, skipped)
    empty = [s for s, ids in splits.items() if not ids]
    if empty:
        raise DataFileError(
            f"task {name}: no {'/'.join(empty)} samples left after leaving out {len(skipped)} samples holding NaN/Inf"
        )
    stats = load_or_compute_stats(name, files, splits["train"], family.steady, stats_dirs)
    coords = to_unit(first.coords(), family.domain).reshape(-1, family.dim)
    initial_step = 1 if family.steady else ds.initial_step
    return TaskData(
        name, family, files, splits, stats, initial_step, coords.astype(np.float32), first.dt(), sorted(skipped)
    )


def log_task_note(task_cfg: Any, is_main: bool = True) -> str | None:
    """Log the task's ``note`` (e.g. ``task=comp_ns2d`` is an alias of cfd2d) once; return it.

    The runner calls this once per run, before building the data; only the main rank logs.
    """
    note = getattr(task_cfg, "note", None)
    if note and is_main:
        log.warning("%s", note)
    return note or None
