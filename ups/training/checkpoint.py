"""Checkpoints in the run directory, written with ``torch.distributed.checkpoint`` (DCP).

Layout, one folder per stage (``stages.<name>``), step folders named by the global step::

    <run_dir>/checkpoints/<stage>/step_00000400/   DCP shards + .metadata, meta.json, COMPLETE
    <run_dir>/checkpoints/<stage>/best/            the stage's lowest validation nRMSE so far
    <run_dir>/checkpoints/<stage>/final/           the stage's end, plus model.pt (consolidated)

Every rank writes its shards into a temporary folder; after a barrier rank 0 writes the
``COMPLETE`` marker and renames the folder into place, so a crash mid-save leaves nothing that
:meth:`Checkpointer.latest` would load. DCP merges identical keys across ranks, so state that
differs per rank (RNG) is saved under a per-rank key.

Nothing in a checkpoint can run code when it is loaded: a run directory may come from someone else
(a shared file system, a download). Tensors are read by torch with ``weights_only=True``; the
bookkeeping is JSON (:func:`pack`), never a pickle; other non-tensor leaves are read with
``torch.load(weights_only=True)`` (:class:`SafeLoadPlanner`), and DCP's ``.metadata`` pickle through
an unpickler that admits only DCP's own metadata classes (:class:`SafeReader`). A folder without
``checksums.json`` is refused unless the caller allows unverified checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from ups.training.checksums import CHECKSUMS, sha256, verify
from ups.training.failures import writing
from ups.training.safe_load import CheckpointError, SafeEmptyPlanner, SafeLoadPlanner, SafeReader, read_metadata

MARKER = "COMPLETE"
log = logging.getLogger(__name__)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def pack(obj: Any) -> bytes:
    """Non-tensor state as one opaque leaf, so DCP neither flattens nor reshapes it: JSON, never a
    pickle (loading a pickle can run code). Tuples come back as lists; NaN and infinities survive."""
    return json.dumps(obj).encode()


def unpack(blob: bytes) -> Any:
    if isinstance(blob, (bytes, bytearray)) and blob[:1] == b"\x80":
        raise CheckpointError(
            "this checkpoint's trainer state is a pickle, written by a UPS before 2026-12-04; it "
            "is not loaded because unpickling can run code. Start a new run (or a new "
            "paths.output_dir), or export its weights with the UPS that wrote it"
        )
    try:
        return json.loads(bytes(blob).decode())
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"the checkpoint's trainer state is not valid JSON ({err})") from None


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def _quiet_single_process() -> Any:
    """DCP warns that it assumes a single process when there is no group; here that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _barrier() -> None:
    if _distributed():
        dist.barrier()


class Checkpointer:
    """Saves and finds complete checkpoints in one folder (a stage's). Every rank calls :meth:`save`."""

    def __init__(self, root: str | Path, keep_last_k: int = 2, is_main: bool = True):
        self.root = Path(root)
        self.keep_last_k, self.is_main = keep_last_k, is_main
        self.unreadable: list[Path] = []  # complete folders whose meta.json could not be read, at the last look

    def save(self, state: dict, name: str, step: int, consolidate: bool = False) -> Path:
        """Write ``state`` to ``checkpoints/<name>`` atomically; prune old step folders."""
        final, tmp = self.root / name, self.root / f".{name}.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()  # the folder exists before anyone writes into it
        try:
            with _quiet_single_process(), writing(tmp):
                dcp.save(state, checkpoint_id=str(tmp), no_dist=not _distributed())
            _barrier()  # every rank's shards are on disk before the marker says so
            if self.is_main:
                with writing(tmp):
                    self._finish(tmp, step, consolidate)
        except BaseException:
            if self.is_main:  # e.g. a full disk: the partial folder only takes space
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.is_main:
            self._swap_in(tmp, final)
            _fsync(self.root)
            self._prune()
        _barrier()  # nobody looks for the checkpoint before it is in place
        return final

    @staticmethod
    def _finish(tmp: Path, step: int, consolidate: bool) -> None:
        """Rank 0: metadata, checksums and the completion marker, each on disk before the next."""
        (tmp / "meta.json").write_text(json.dumps({"step": step}))
        if consolidate:
            export_model(tmp, tmp / "model.pt", check=False)
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        (tmp / CHECKSUMS).write_text(json.dumps({p.name: sha256(p) for p in files}, indent=1))
        for p in [*files, tmp / CHECKSUMS]:
            _fsync(p)  # on disk before the marker says the folder is complete
        (tmp / MARKER).touch()
        _fsync(tmp / MARKER)
        _fsync(tmp)

    def copy(self, src: str, dst: str) -> Path:
        """Copy a complete checkpoint folder to another name (e.g. a step to ``best``), atomically."""
        final, tmp = self.root / dst, self.root / f".{dst}.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                with writing(tmp):
                    shutil.copytree(self.root / src, tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # a partial copy holds the marker: never leave it
                raise
            self._swap_in(tmp, final)
        _barrier()
        return final

    def _swap_in(self, tmp: Path, final: Path) -> None:
        """Rename a finished folder to its name, keeping the previous copy until the new one is in place."""
        old = self.root / f".{final.name}.old"
        self._recover(final)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def _recover(self, final: Path) -> None:
        """Undo a swap a kill interrupted: ``.<name>.old`` is the previous complete copy.

        Killed between the two renames, only the old copy exists: it goes back under its name.
        Killed before the old copy was removed, both exist: the old one is left over and goes.
        """
        old = self.root / f".{final.name}.old"
        if not old.exists() or not self.is_main:
            return
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        elif (old / MARKER).exists():
            old.rename(final)

    def _complete(self, names: list[Path]) -> list[tuple[float, Path]]:
        """(step, folder) of the complete folders among ``names``; one with an unreadable meta.json is
        skipped and listed in ``self.unreadable``."""
        out, self.unreadable = [], []
        for p in names:
            if not (p / MARKER).exists():
                continue
            try:
                out.append((_step_of(p) + (0.5 if p.name == "final" else 0.0), p))  # final wins a tie
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("%s/meta.json is unreadable (%s); that checkpoint is skipped", p, err)
                self.unreadable.append(p)
        return sorted(out, key=lambda sp: sp[0])

    def _steps(self) -> list[Path]:
        return [p for _, p in self._complete(list(self.root.glob("step_*")))]

    def _prune(self) -> None:
        for p in self._steps()[: -self.keep_last_k]:
            shutil.rmtree(p, ignore_errors=True)

    def candidates(self) -> list[Path]:
        """Complete checkpoints newest first: ``final`` if training finished, then the step folders."""
        for name in ("final", "best"):
            self._recover(self.root / name)
        if self.is_main:  # a save or copy cut short (a kill, a full disk) leaves its temporary folder
            for tmp in self.root.glob(".*.tmp"):
                shutil.rmtree(tmp, ignore_errors=True)
        _barrier()  # rank 0 may have moved a folder back: everyone looks after it did
        return [p for _, p in reversed(self._complete([*self.root.glob("step_*"), self.root / "final"]))]

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        found = self.candidates()
        return found[0] if found else None

    @staticmethod
    def load_into(path: str | Path, state: dict, allow_unverified: bool = False, local: bool = False) -> dict:
        """Fill ``state`` (a template with the keys to read) from a complete, verified checkpoint, in place.

        Raises CheckpointError naming the file when the folder is incomplete, fails its checksums
        or cannot be read. ``local``: this rank alone reads (not a collective, even in a process group).
        """
        path = Path(path)
        if not (path / MARKER).exists():
            raise CheckpointError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
        verify(path, allow_unverified)
        try:
            with _quiet_single_process():
                dcp.load(
                    state,
                    storage_reader=SafeReader(str(path)),
                    planner=SafeLoadPlanner(),
                    no_dist=local or not _distributed(),
                )
        except (Exception, CheckpointException) as err:  # torch's CheckpointException is a BaseException
            raise _load_error(path, err) from None
        return state

    @staticmethod
    def saved_keys(path: str | Path) -> set[str]:
        """Top-level keys stored in a checkpoint (e.g. which ranks saved RNG state)."""
        return {k.split(".")[0] for k in read_metadata(path).state_dict_metadata}


def _load_error(path: Path, err: BaseException) -> CheckpointError:
    """One paragraph for a failed load: DCP wraps every rank's error in a CheckpointException whose
    text is their tracebacks; the first rank's own error says what happened."""
    if isinstance(err, CheckpointException) and err.failures:
        err = next(iter(err.failures.values()))[0]
    if isinstance(err, CheckpointError):
        return err
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    wrapped = "global metadata read failed: "  # torch 2.13 re-raises a .metadata error as an AssertionError
    if wrapped in first:
        return CheckpointError(first.split(wrapped, 1)[1])
    return CheckpointError(f"{path} cannot be loaded: {type(err).__name__}: {first[:300]}")


def _step_of(path: Path) -> int:
    return json.loads((path / "meta.json").read_text())["step"]


def last_trained_stage(stages: Any) -> str:
    """The name of the last stage that trains (``steps`` not 0): its weights are the run's model."""
    return [name for name, stage in stages.items() if stage.get("steps") != 0][-1]


def run_checkpoint(run_dir: str | Path, stages: Any, which: str = "final") -> Path:
    """``checkpoints/<stage>/<which>`` of the run's last stage that trains: the run's model.

    ``which`` is ``final``, ``best`` or a ``step_*`` folder name. Raises FileNotFoundError, naming
    what exists, when that checkpoint is not complete.
    """
    if not _plain_name(which):
        raise FileNotFoundError(
            f"checkpoint={which!r} is not a checkpoint name of the run: use final, best or a "
            "step folder name such as step_00000400 (no paths)"
        )
    path = Path(run_dir) / "checkpoints" / last_trained_stage(stages) / which
    if not (path / MARKER).exists():
        done = sorted(
            str(p.parent.relative_to(run_dir))
            for p in Path(run_dir).glob(f"checkpoints/*/*/{MARKER}")
            if not p.parent.name.startswith(".")
        )  # temporary and swap folders are not checkpoints
        raise FileNotFoundError(f"no complete checkpoint {path}; complete ones: {', '.join(done) or 'none'}")
    return path


def _plain_name(name: str) -> bool:
    """A folder name inside a stage's checkpoints (final, best, step_N), not a path out of it."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and not name.startswith(".")


def load_consolidated(path: str | Path, allow_unverified: bool = False) -> dict:
    """A whole DCP checkpoint as one plain dict in this process (no process group needed)."""
    path = Path(path)
    verify(path, allow_unverified)
    return _consolidate(path)


def _consolidate(path: Path) -> dict:
    state: dict = {}
    try:
        with _quiet_single_process():
            _load_state_dict(state, storage_reader=SafeReader(str(path)), planner=SafeEmptyPlanner(), no_dist=True)
    except (Exception, CheckpointException) as err:  # torch's CheckpointException is a BaseException
        raise _load_error(path, err) from None
    if isinstance(state.get("trainer"), bytes):
        state["trainer"] = unpack(state["trainer"])
    return state


def export_model(path: str | Path, out: str | Path, check: bool = True) -> Path:
    """Write the model weights and resolved config of a checkpoint to one ``torch.save`` file.

    ``check=False`` only for the folder being written, whose checksums come after this file."""
    state = load_consolidated(path) if check else _consolidate(Path(path))
    torch.save({"model": state["model"], "config": state["trainer"]["config"], "step": state["trainer"]["step"]}, out)
    return Path(out)


if __name__ == "__main__":  # python -m ups.training.checkpoint <checkpoint dir> <out.pt>
    import sys

    from ups.errors import exit_on_error  # the one error path of every entry point

    if len(sys.argv) != 3:
        sys.exit("usage: python -m ups.training.checkpoint <checkpoints/NAME> <out.pt>")
    with exit_on_error(f"Cannot export {sys.argv[1]}: "):
        print(export_model(sys.argv[1], sys.argv[2]))


def load_eval_weights(path: str | Path, allow_unverified: bool = False) -> tuple[dict, str]:
    """The weights a run evaluates with from a checkpoint folder, and a description of their source.

    ``model.pt`` (written into ``final``) is the quick path; a run that averaged its weights (EMA)
    evaluated with the average, which only the full checkpoint holds, so that is consolidated here.
    """
    path = Path(path)
    state = load_consolidated(path, allow_unverified)
    shadow = next(
        (v["shadow"] for v in state.get("callbacks", {}).values() if isinstance(v, dict) and v.get("shadow")), None
    )
    if shadow:
        return {**state["model"], **shadow}, f"{path} (EMA weights, as evaluated)"
    return state["model"], str(path)
