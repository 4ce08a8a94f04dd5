"""Loading a checkpoint without running code from it.

A run directory may come from someone else (a shared file system, a download, a colleague's
archive). torch's distributed checkpoint (DCP) reads its ``.metadata`` with ``pickle.load`` and
non-tensor leaves with ``torch.load(weights_only=False)``: a crafted file runs any command. Here
``.metadata`` goes through an unpickler that admits only DCP's own metadata classes (and torch.Size,
dtypes, layouts, paths), and non-tensor leaves through ``torch.load(weights_only=True)``. Tensors
are already read by DCP with ``weights_only=True``.
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
import torch.distributed.checkpoint.metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner

from ups.errors import CheckpointError  # noqa: F401 - defined in ups.errors, imported from here too


def _metadata_classes() -> dict[tuple[str, str], Any]:
    """What a DCP ``.metadata`` pickle may name: DCP's own metadata classes, torch.Size, dtypes and
    layouts, and paths. Anything else (``os.system``, ``subprocess.Popen``, ...) is refused."""
    allowed: dict[tuple[str, str], Any] = {}
    for name in dir(dcp_metadata):
        obj = getattr(dcp_metadata, name)
        if isinstance(obj, type) and obj.__module__ == dcp_metadata.__name__:
            allowed[(dcp_metadata.__name__, name)] = obj
    allowed[(_StorageInfo.__module__, "_StorageInfo")] = _StorageInfo
    allowed[("torch", "Size")] = torch.Size
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
            allowed[("torch", name)] = getattr(torch, name)
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    for name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"):
        allowed[("pathlib", name)] = getattr(pathlib, name)
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    return allowed


_ALLOWED = _metadata_classes()


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which is not a checkpoint metadata class "
                "(a pickle naming it could run code)"
            ) from None


def read_metadata(path: str | Path) -> dcp_metadata.Metadata:
    """A checkpoint's DCP ``.metadata``, unpickled with only DCP's metadata classes allowed."""
    f = Path(path) / ".metadata"
    try:
        with open(f, "rb") as stream:
            meta = _MetadataUnpickler(stream).load()
    except FileNotFoundError:
        raise CheckpointError(f"{f} is missing") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError) as err:
        raise CheckpointError(
            f"{f} is refused: {err}. Nothing of it was run; delete that checkpoint folder "
            "if you do not know where it came from"
        ) from None
    if not isinstance(meta, dcp_metadata.Metadata):
        raise CheckpointError(f"{f} is refused: it holds a {type(meta).__name__}, not DCP metadata")
    return meta


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader with :func:`read_metadata` in place of its ``pickle.load``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        meta = read_metadata(self.path)
        if getattr(meta, "storage_meta", None) is None:
            meta.storage_meta = dcp_metadata.StorageMeta()
        meta.storage_meta.load_id = self.load_id
        return meta


def _load_leaf(value: io.BytesIO) -> Any:
    """A non-tensor leaf (a number, a string, JSON bytes, an optimizer's betas): primitives only."""
    try:
        return torch.load(value, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError and others for a refused global
        raise CheckpointError(
            f"a value in the checkpoint is refused by torch.load(weights_only=True): {str(err).splitlines()[0][:200]}"
        ) from None


def _safe_load_bytes(planner: DefaultLoadPlanner, read_item: Any, value: io.BytesIO) -> None:
    """:meth:`DefaultLoadPlanner.load_bytes` with ``weights_only=True`` (torch's own uses False)."""
    obj = _load_leaf(value)
    if planner.flatten_state_dict:
        set_element(planner.original_state_dict, planner.mappings[read_item.dest_index.fqn], obj)
    else:
        planner.state_dict[read_item.dest_index.fqn] = obj


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner, reading non-tensor leaves with ``weights_only=True``."""

    load_bytes = _safe_load_bytes


class SafeEmptyPlanner(_EmptyStateDictLoadPlanner):
    """Loads every key of a checkpoint (a consolidation), non-tensor leaves with ``weights_only=True``."""

    load_bytes = _safe_load_bytes
