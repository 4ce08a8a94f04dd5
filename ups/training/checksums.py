"""Checksums of a checkpoint folder: written when it is saved (``checksums.json``, before the
``COMPLETE`` marker), checked before anything in it is loaded, so a damaged or replaced file is
named instead of loaded. Exports (``ups.exported``) hash their files with the same routine.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ups.errors import CheckpointError

CHECKSUMS = "checksums.json"  # sha256 of every file of the folder, written before the marker
UNVERIFIED_OPTION = "trainer.allow_unverified_checkpoints=true"  # ups.evaluate: allow_unverified_checkpoints=true
log = logging.getLogger(__name__)


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: str | Path, allow_unverified: bool = False) -> None:
    """Check every file of a checkpoint against the checksums written when it was saved.

    Raises CheckpointError naming the first bad file. A folder without ``checksums.json`` (saved
    before checksums existed, or with them removed) is refused unless ``allow_unverified``.
    """
    path = Path(path)
    try:
        sums = json.loads((path / CHECKSUMS).read_text())
    except FileNotFoundError:
        if allow_unverified:
            log.warning("%s has no %s: loading it unchecked, as allowed", path, CHECKSUMS)
            return
        raise CheckpointError(
            f"{path} has no {CHECKSUMS}, so a damaged or replaced file in it cannot be detected; "
            f"it is not loaded. If you trust where it came from, allow it with "
            f"{UNVERIFIED_OPTION} (python -m ups.evaluate: allow_unverified_checkpoints=true)"
        ) from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path / CHECKSUMS} is unreadable ({err})") from None
    if not isinstance(sums, dict) or not all(
        isinstance(k, str) and "/" not in k and k not in ("", ".", "..") for k in sums
    ):
        raise CheckpointError(f"{path / CHECKSUMS} is malformed")
    for name, digest in sums.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f} is missing")
        if sha256(f) != digest:
            raise CheckpointError(f"{f} does not match its checksum (corrupt or truncated)")
