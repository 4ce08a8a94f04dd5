"""Checks that make bad input fail at dataset construction, with the file, sample and key named.

Three levels, from cheap to thorough:

1. ``TrajectoryFile(...)`` (readers.py) opens every file and checks keys, shapes, coordinates and
   the time axis: metadata only, every run.
2. :func:`probe_ends` reads the first and last value of every data key of the first and last
   sample of every file, every run. HDF5 refuses most truncated files at open (the stored end of
   file is past the real one), but h5py opens lazily and a damaged file may only fail on read; the
   last value of the last sample is the end of a file's data, so a cut-off download fails here for
   a few bytes of I/O (one chunk when compressed) whatever the file size.
3. :func:`scan_file` reads every sample once (with the run's strides), checking that it can be
   read (a corrupt compressed chunk fails only when touched), that each group has the first one's
   shape, and which samples hold NaN or Inf. Scanning a 100 GB file at every start would cost
   minutes, so the result is cached in ``<dir>/.ups_stats/scan-<file>-<hash>.json`` keyed like the
   normalisation statistics: file name, size, modification time and the strides/cap. Rewriting,
   touching or re-downloading a file changes the key, so it is scanned again; an unreadable cache
   entry is rescanned with a warning. Read errors are never cached: they fail the run.

Samples with non-finite values fail the run by default (``data.nonfinite=error``) naming the file,
sample, frame and key; ``data.nonfinite=skip`` drops them from every split with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ups.data.readers import DataFileError, TrajectoryFile
from ups.data.stats import cached_paths, file_fingerprint, store_cached

log = logging.getLogger(__name__)

NONFINITE_POLICIES = ("error", "skip")
_SCAN_VERSION = 1  # bump when what a scan records changes, so old cache entries are not trusted


def _first_nonfinite(traj: np.ndarray) -> tuple[int, int] | None:
    """(frame, channel) of the first NaN/Inf value of a (T, *space, C) trajectory, or None."""
    bad = ~np.isfinite(traj)
    if not bad.any():
        return None
    per = bad.reshape(traj.shape[0], -1, traj.shape[-1]).any(axis=1)  # (T, C)
    frame, channel = map(int, np.argwhere(per)[0])
    return frame, channel


def describe_nonfinite(f: TrajectoryFile, i: int, frame: int, channel: int) -> str:
    """'<file>: sample j frame t (key 'k') holds NaN/Inf values', in stored (unstrided) indices."""
    return (
        f"{f.path}: {f.sample_name(i)} frame {f.stored_frame(frame)} (key {f.key_of(i, frame, channel)!r}, "
        f"channel {f.family.channels[channel]!r}) holds NaN/Inf values"
    )


def probe_ends(f: TrajectoryFile) -> None:
    """The every-run check: the first and last values of the first and last sample can be read."""
    f.probe()


def scan_file(f: TrajectoryFile) -> list[list[int]]:
    """Read every sample; return ``[sample, frame, channel]`` of the first NaN/Inf in each bad sample.

    Unreadable samples and groups whose shape differs from the first raise DataFileError.
    """
    want = (f.n_steps,) + f.space + (f.channels,)
    bad = []
    for i in range(f.n_samples):
        traj = f.read(i)
        if traj.shape != want:
            raise DataFileError(
                f"{f.path}: {f.sample_name(i)} reads as shape {traj.shape}; the first sample "
                f"gives {want}: every sample of a file needs the same shape"
            )
        where = _first_nonfinite(traj)
        if where is not None:
            bad.append([i, *where])
    return bad


def _cache_name(f: TrajectoryFile) -> str:
    h = hashlib.sha256(f"v{_SCAN_VERSION}|{file_fingerprint(f)}".encode()).hexdigest()[:16]
    return f"scan-{f.path.stem}-{h}.json"


def _load_cached(path: Path, f: TrajectoryFile) -> list[list[int]] | None:
    try:
        entry = json.loads(path.read_text())
        bad = entry["nonfinite"]
        if entry["n_samples"] != f.n_samples or not all(
            len(b) == 3 and 0 <= b[0] < f.n_samples and 0 <= b[2] < f.channels for b in bad
        ):
            raise ValueError("entries do not fit the file")
        return [[int(v) for v in b] for b in bad]
    except (OSError, ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        log.warning("%s: unreadable scan cache (%s); scanning %s again", path, err, f.path.name)
        return None


def load_or_scan(f: TrajectoryFile, store_dirs: Sequence[Path]) -> list[list[int]]:
    """:func:`scan_file`'s result from the cache in the first of ``store_dirs`` that has it, else scan.

    The result is written to the first writable directory (data directory first, then e.g. the run
    directory when the data is read-only).
    """
    name = _cache_name(f)
    for path in cached_paths(name, store_dirs):
        cached = _load_cached(path, f) if path.exists() else None
        if cached is not None:
            return cached
    log.info(
        "%s: checking all %d samples once for read errors and NaN/Inf (cached under .ups_stats/)",
        f.path.name,
        f.n_samples,
    )
    bad = scan_file(f)
    entry = json.dumps(
        {"file": f.path.name, "fingerprint": file_fingerprint(f), "n_samples": f.n_samples, "nonfinite": bad}
    )
    store_cached(name, entry, store_dirs)
    return bad


_SAMPLE_BYTES = 1 << 20  # content fingerprints read this much at the start, middle and end of a file
_fingerprints: dict[tuple[str, int, int, int], str] = {}


def content_fingerprint(path: str | Path) -> str:
    """``"<size> bytes, sha256 <16 hex>"`` of a file's size and 1 MiB at its start, middle and end.

    Cheap at any file size (3 MiB read, cached per size and modification time), and it sees what a
    modification time misses: another file copied over this one (``cp -p`` keeps the time) holds
    other bytes in those blocks, while a touched or re-copied identical file keeps its fingerprint.
    """
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _fingerprints:
        h = hashlib.sha256(str(st.st_size).encode())
        with open(path, "rb") as f:
            for start in sorted({0, max(0, st.st_size // 2 - _SAMPLE_BYTES // 2), max(0, st.st_size - _SAMPLE_BYTES)}):
                f.seek(start)
                h.update(f.read(_SAMPLE_BYTES))
        _fingerprints[key] = f"{st.st_size} bytes, sha256 {h.hexdigest()[:16]}"
    return _fingerprints[key]


def data_fingerprints(tasks: Sequence) -> dict[str, str]:
    """``{"<task>/<file name>": content_fingerprint}`` of every file the tasks read (checkpoints record it)."""
    return {f"{t.name}/{f.path.name}": content_fingerprint(f.path) for t in tasks for f in t.files}


def warn_duplicates(task: str, files: Sequence[TrajectoryFile]) -> list[tuple[str, str]]:
    """Warn about files of one task with the same content (``name (1).hdf5`` beside ``name.hdf5``, a
    second download): both match the task's patterns, so every sample would count twice. Returns the pairs."""
    seen: dict[str, Path] = {}
    pairs = []
    for f in files:
        fp = content_fingerprint(f.path)
        if fp in seen:
            pairs.append((seen[fp].name, f.path.name))
        else:
            seen[fp] = f.path
    for a, b in pairs:
        log.warning(
            "task %s: %s and %s hold the same content (a duplicate download?); both match the task's file "
            "patterns, so their samples count twice in every split. Remove or move one of them",
            task,
            a,
            b,
        )
    return pairs


def nonfinite_samples(
    task: str, files: Sequence[TrajectoryFile], store_dirs: Sequence[Path], policy: str
) -> set[tuple[int, int]]:
    """Check every file of a task; return the (file index, sample) pairs to leave out.

    ``policy="error"`` raises DataFileError at the first bad sample (file, sample, frame, key named);
    ``"skip"`` returns them and logs how many were skipped.
    """
    if policy not in NONFINITE_POLICIES:
        raise ValueError(f"data.nonfinite={policy!r} is not one of {', '.join(NONFINITE_POLICIES)}")
    for f in files:
        probe_ends(f)
    warn_duplicates(task, files)
    skipped: set[tuple[int, int]] = set()
    for k, f in enumerate(files):
        bad = load_or_scan(f, store_dirs)
        if bad and policy == "error":
            i, frame, channel = bad[0]
            raise DataFileError(
                f"{describe_nonfinite(f, i, frame, channel)}; {len(bad)} of {f.n_samples} samples "
                f"of this file hold NaN/Inf. Set data.nonfinite=skip to leave them out."
            )
        skipped.update((k, b[0]) for b in bad)
    if skipped:
        per_file = {files[k].path.name: sum(1 for kk, _ in skipped if kk == k) for k in sorted({k for k, _ in skipped})}
        total = sum(f.n_samples for f in files)
        log.warning(
            "task %s: skipped %d of %d samples holding NaN/Inf (data.nonfinite=skip): %s",
            task,
            len(skipped),
            total,
            ", ".join(f"{n}: {c}" for n, c in per_file.items()),
        )
    return skipped
