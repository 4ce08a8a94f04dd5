"""Reading a run's ``metrics.jsonl`` (``ups.training.loggers.JsonlLogger`` writes it): one reader for the
report, the launchers, the benchmarks and the fault harness. Standard library only, so a launcher that
reads its runs does not import torch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def read_records(run_dir: str | Path, missing_ok: bool = False) -> list[dict]:
    """The records of ``<run_dir>/metrics.jsonl`` in file order. A line that is not JSON (cut short by a
    kill) is skipped with a warning; a missing file raises FileNotFoundError, or gives [] with
    ``missing_ok`` (a run killed before its first record)."""
    path = Path(run_dir) / "metrics.jsonl"
    if missing_ok and not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d is not JSON (a line cut short?); skipped", path, n)
    return out
