"""Latent cache: encode every training window once with a frozen encoder, then train from disk.

Stages that freeze the encoder would otherwise re-read and re-encode the same windows every epoch.
A cache is one folder per (task, split, key) under a cache root::

    <root>/<task>-<split>-<key>/
        z.npy       (N_windows, L, H)   latents, float32 / float16 / bfloat16 (stored as uint16 bits)
        frames.npy  (N_traj, T, P, C)   the normalised trajectories, float32
        cond.npy    (N_traj, cond_dim)  conditioning vectors
        meta.json   written last; the folder is valid only with it

The key hashes everything the latents depend on (encoder weights of that task, the data files and
split, normalisation, model sizes, encoder code, storage dtype), so a changed input gives a new
folder name and a stale cache is never read. Builds write into ``<name>.tmp-<pid>-<rand>`` and are
renamed into place only when complete: a killed build leaves only a ``.tmp-*`` folder, which is
never read. In distributed runs rank 0 builds and the other ranks wait at a barrier, then open it.
Reading a cache (its validity check and the datasets over it) is ``ups.data.latent_dataset``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn

from ups.data.datasets import WindowDataset
from ups.data.latent_dataset import CACHE_VERSION, MARKER, LatentWindowDataset, is_complete, read_meta
from ups.data.stats import stats_key
from ups.data.tasks import TaskData
from ups.models.spec import LatentEncoder, spec_of, unwrap

_DTYPES = {
    torch.float32: ("float32", np.float32),
    torch.float16: ("float16", np.float16),
    torch.bfloat16: ("bfloat16", np.uint16),
}  # numpy has no bfloat16: keep its bits


def _latent(model: nn.Module) -> tuple[nn.Module, LatentEncoder]:
    """The plain model and its spec's latent encoder; a model without one cannot be cached."""
    m, spec = unwrap(model), spec_of(model)
    if spec.latent is None:
        raise ValueError(f"model family {spec.name!r} has no encoder whose latents can be cached")
    return m, spec.latent


def encoder_state(model: nn.Module, task: str) -> dict[str, Tensor]:
    """The tensors the task's encoding reads, as the model's spec names them (the cache key hashes them)."""
    m, latent = _latent(model)
    return latent.state(m, task)


def _code_digest(model: nn.Module) -> str:
    """Hash of the source files defining the encoder's classes: an edited encode rebuilds the cache."""
    encoder = spec_of(model).groups(model).get("encoder", model)
    names = {type(s).__module__ for s in encoder.modules()} | {type(model).__module__}
    h = hashlib.sha256()
    for name in sorted(n for n in names if n.startswith("ups.")):
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:
            h.update(Path(path).read_bytes())
    return h.hexdigest()


def latent_key(
    model: nn.Module, task: TaskData, split: str, extra: dict | None = None, dtype: torch.dtype = torch.float32
) -> str:
    """A hash of everything the cached latents of ``task``/``split`` depend on.

    (a) the encoder weights this task uses (`encoder_state`) and the encoder's source code, (b) the
    data identity (`ups.data.stats.stats_key`: file names, sizes, mtimes, strides, sample ids, plus
    their order and the grid), (c) the settings that change latents (initial_step, the latent
    shape, Fourier features, normalisation statistics, storage dtype) and ``extra``.
    """
    m, latent = _latent(model)
    ids = [list(i) for i in task.splits[split]]
    io = getattr(m, "tasks", {}).get(task.name)
    fourier = [f for f in (getattr(m, n, None) for n in ("local_fourier", "position_fourier")) if f is not None]
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "version": CACHE_VERSION,
                "task": task.name,
                "split": split,
                "ids": ids,
                "data": stats_key(task.files, task.splits[split]),
                "family": task.family.name,
                "initial_step": task.initial_step,
                "n_steps": task.n_steps,
                "dt": task.dt,
                "stats": asdict(task.stats),
                "latent_shape": list(latent.shape(m, task.name)),
                "io": asdict(io) if io is not None else None,
                "fourier": [[getattr(f, "n_freqs", None), getattr(f, "max_freq", None)] for f in fourier],
                "dtype": _DTYPES[dtype][0],
                "extra": extra or {},
            },
            sort_keys=True,
            default=str,
        ).encode()
    )
    h.update(np.ascontiguousarray(task.coords, dtype=np.float32).tobytes())
    for name, t in sorted(encoder_state(m, task.name).items()):
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{t.numel()}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    h.update(_code_digest(m).encode())
    return h.hexdigest()[:20]


def cache_name(task: str, split: str, key: str) -> str:
    """Folder name of a complete cache."""
    return f"{task}-{split}-{key}"


def infer_split(dataset: WindowDataset) -> str:
    """The split whose sample ids the dataset holds (WindowDataset does not store the name)."""
    for split, ids in dataset.task.splits.items():
        if list(ids) == list(dict.fromkeys(dataset.source.ids)):  # each sample once, whatever its copies
            return split
    raise ValueError(f"task {dataset.task.name}: the dataset's samples are not one split; pass split=")


def cache_nbytes(dataset: WindowDataset, model: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """Bytes a cache of ``dataset`` takes: latents (the bulk for wide models) plus frames and cond."""
    (m, latent), task = _latent(model), dataset.task
    z = len(dataset) * int(np.prod(latent.shape(m, task.name))) * torch.empty((), dtype=dtype).element_size()
    return z + len(dataset.source) * (task.n_steps * task.coords.shape[0] * task.channels + len(task.cond(0))) * 4


def find_cache(cache_root: Path, task: str, split: str, key: str) -> Path | None:
    """The complete cache folder for exactly this key, or None. ``.tmp-*`` folders are never returned."""
    path = Path(cache_root) / cache_name(task, split, key)
    return path if path.is_dir() and is_complete(path, key) else None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync directories; the rename is still atomic
        pass
    finally:
        os.close(fd)


@torch.no_grad()
def build_latent_cache(
    model: nn.Module,
    dataset: WindowDataset,
    cache_root: Path,
    key: str,
    device: Any,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
    split: str | None = None,
) -> Path:
    """Encode every window of ``dataset`` with the spec's encoder (eval mode, no grad) and store it atomically.

    Returns the final folder. If a complete cache with this key already exists (e.g. another rank
    finished first) it is returned as is. Each trajectory is read once and its windows encoded in
    batches of ``batch_size``; ``progress(done, total)`` is called after each batch.
    """
    (m, latent), task = _latent(model), dataset.task
    split = split or infer_split(dataset)
    root = Path(cache_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / cache_name(task.name, split, key)
    if is_complete(final, key):
        return final
    need = cache_nbytes(dataset, m, dtype)
    free = shutil.disk_usage(root).free
    if free < need * 1.05:
        raise OSError(
            f"latent cache for {task.name}/{split} needs {need / 2**30:.2f} GiB, {root} has "
            f"{free / 2**30:.2f} GiB free; use a float16/bfloat16 cache or another cache root"
        )
    tmp = root / f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    was_training = m.training
    m.eval()  # dropout off: the cache must hold the deterministic encoding
    try:
        t0 = time.perf_counter()
        n_traj, per_traj, k = len(dataset.source), dataset.per_traj, task.initial_step
        n, n_pts, c = len(dataset), task.coords.shape[0], task.channels
        zname, znp = _DTYPES[dtype]
        z_mm = np.lib.format.open_memmap(tmp / "z.npy", mode="w+", dtype=znp, shape=(n, *latent.shape(m, task.name)))
        f_mm = np.lib.format.open_memmap(
            tmp / "frames.npy", mode="w+", dtype=np.float32, shape=(n_traj, task.n_steps, n_pts, c)
        )
        conds = np.stack([task.cond(file_idx) for file_idx, _ in dataset.source.ids]).astype(np.float32)
        coords = torch.from_numpy(task.coords)[None].to(device)
        pending: list[np.ndarray] = []
        done = 0

        def flush() -> None:
            nonlocal done
            x = torch.from_numpy(np.stack(pending)).to(device)
            with torch.autocast(torch.device(device).type, enabled=False):  # the key assumes the weights' precision
                z = latent.encode(m, task.name, x, coords).to(dtype).cpu()
            z_np = z.view(torch.int16).numpy().view(np.uint16) if dtype == torch.bfloat16 else z.numpy()
            z_mm[done : done + len(pending)] = z_np  # noqa: F821 - the enclosing scope's; its later del misleads pyflakes
            done += len(pending)
            pending.clear()
            if progress is not None:
                progress(done, n)

        for j in range(n_traj):
            # One read per trajectory; WindowDataset.__getitem__ would re-read it for every window.
            frames = dataset.source[j].reshape(task.n_steps, n_pts, c)
            f_mm[j] = frames
            for start in range(per_traj):
                # (k, P, C) -> (P, k*C), time outermost per point: exactly WindowDataset's "x".
                pending.append(np.ascontiguousarray(frames[start : start + k].transpose(1, 0, 2).reshape(n_pts, k * c)))
                if len(pending) == batch_size:
                    flush()
        if pending:
            flush()
        z_mm.flush(), f_mm.flush()
        del z_mm, f_mm
        np.save(tmp / "cond.npy", conds)
        files = ("z.npy", "frames.npy", "cond.npy")
        for name in files:
            _fsync(tmp / name)
        meta = {
            "version": CACHE_VERSION,
            "key": key,
            "task": task.name,
            "split": split,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "n_windows": n,
            "n_traj": n_traj,
            "per_traj": per_traj,
            "initial_step": k,
            "z_shape": [n, *latent.shape(m, task.name)],
            "z_dtype": zname,
            "frames_shape": [n_traj, task.n_steps, n_pts, c],
            "cond_shape": list(conds.shape),
            "build_seconds": round(time.perf_counter() - t0, 3),
            "file_sizes": {f: (tmp / f).stat().st_size for f in files},
            "torch": torch.__version__,
        }
        with open(tmp / MARKER, "w") as fh:  # the marker goes last: without it the folder is not a cache
            json.dump(meta, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync(tmp)
        _publish(tmp, final, key)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        m.train(was_training)


def _publish(tmp: Path, final: Path, key: str) -> None:
    """Rename a finished build into place; the first complete one wins, later ones are dropped."""
    for _ in range(2):
        try:
            os.rename(tmp, final)  # atomic; fails if ``final`` exists (non-empty), so no one is overwritten
            _fsync(final.parent)
            return
        except OSError:
            if is_complete(final, key):  # a concurrent builder finished first: use its cache
                shutil.rmtree(tmp, ignore_errors=True)
                return
            if final.exists():  # debris without a valid marker: move it aside atomically, then retry
                junk = final.with_name(f"{final.name}.tmp-stale-{uuid.uuid4().hex[:8]}")
                os.rename(final, junk)
                shutil.rmtree(junk, ignore_errors=True)
    raise OSError(f"could not move {tmp} to {final}")


def load_or_build(
    model: nn.Module,
    dataset: WindowDataset,
    cache_root: Path,
    device: Any,
    *,
    split: str | None = None,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    extra: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    build: bool = True,
) -> LatentWindowDataset:
    """Open the cache for the model's current encoder weights, building it first if absent.

    ``build=False`` (ranks other than 0, after the barrier) raises FileNotFoundError instead of building.
    """
    split = split or infer_split(dataset)
    if dataset.source.moves:  # copies (data.augment) are windows of the cache too
        extra = {**(extra or {}), "copies": [str(move) for move in dataset.source.moves]}
    key = latent_key(model, dataset.task, split, extra, dtype)
    path = find_cache(cache_root, dataset.task.name, split, key)
    if path is None:
        if not build:
            raise FileNotFoundError(f"no latent cache {cache_name(dataset.task.name, split, key)} in {cache_root}")
        path = build_latent_cache(model, dataset, cache_root, key, device, batch_size, dtype, progress, split)
    return LatentWindowDataset(path, dataset, key)


def prune_cache(
    cache_root: Path, keep_keys: Iterable[str] | None = None, tmp_older_than_s: float = 3600.0
) -> list[Path]:
    """Delete ``.tmp-*`` folders older than ``tmp_older_than_s`` (killed builds) and, if ``keep_keys``
    is given, complete caches whose key is not in it. Call on one rank only, before others read."""
    removed, keep = [], None if keep_keys is None else set(keep_keys)
    root = Path(cache_root)
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not path.is_dir():
            continue
        if ".tmp-" in path.name:
            # Age, not pid liveness: on a shared file system the builder may be on another host.
            stale = time.time() - path.stat().st_mtime > tmp_older_than_s
        else:
            meta = read_meta(path)
            stale = keep is not None and meta is not None and meta.get("key") not in keep
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
