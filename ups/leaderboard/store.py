"""A leaderboard folder: ``rows.jsonl`` (one row per run, appended) and the tables built from it,
``leaderboard.md`` and ``leaderboard.csv``.

Jobs of a sweep finish at the same moment, so an append takes an exclusive ``flock`` on
``<folder>/.lock`` for the whole read-append-rewrite; the tables are written to a temporary file and
renamed, so a reader sees the old table or the new one, never half of one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from ups.file_lock import exclusive
from ups.leaderboard.rows import run_row
from ups.leaderboard.table import by_group, columns, markdown, to_csv

ROWS = "rows.jsonl"


def locked(folder: Path) -> AbstractContextManager:
    """Hold the folder's exclusive lock (blocking): one writer at a time, across processes and hosts
    that honour flock on the shared file system."""
    return exclusive(Path(folder) / ".lock")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_rows(folder: str | Path) -> list[dict[str, Any]]:
    """The rows appended to a folder, the last row of each run winning (a rerun replaces its row)."""
    path = Path(folder) / ROWS
    by_run: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line torn by a crash outside the lock: skipped, the others stand
                continue
            by_run[row["run"]] = row
    return list(by_run.values())


def write_tables(folder: str | Path, rows: list[dict], sources: str) -> list[Path]:
    """``leaderboard.md`` and ``leaderboard.csv`` of ``rows`` in ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "runs": sources,
        "written": dt.datetime.now().isoformat(timespec="seconds"),
        "ranked": sum(r.get("status") == "ranked" for r in rows),
        "not ranked": sum(r.get("status") != "ranked" for r in rows),
    }
    paths = [folder / "leaderboard.md", folder / "leaderboard.csv"]
    _atomic_write(paths[0], markdown(rows, meta))
    _atomic_write(paths[1], to_csv(rows))
    return paths


def append_run(folder: str | Path, run_dir: str | Path) -> dict[str, Any]:
    """Append ``run_dir``'s row to the leaderboard in ``folder`` and rewrite its tables, under the lock.

    Returns the row. Safe when many jobs call it at once: none is lost, none torn."""
    folder, row = Path(folder), run_row(run_dir)
    with locked(folder):
        with open(folder / ROWS, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        write_tables(folder, read_rows(folder), f"appended by training runs ({folder / ROWS})")
    return row


def wandb_tables(rows: list[dict]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """Per task group: the columns and data of its W&B table (the CSV's columns, ranked runs only)."""
    out = {}
    for name, group in by_group(rows).items():
        cols = columns(group)
        out[name] = (cols, [[r.get(c) for c in cols] for r in group])
    return out


def publish_wandb(rows: list[dict], run: Any = None, **init: Any) -> None:
    """Log each group's table to W&B as ``leaderboard/<group>``: into ``run`` if given, else into a new
    run started with ``wandb.init(**init)`` (``job_type="leaderboard"``) and finished here."""
    import wandb

    own = run is None
    if own:
        run = wandb.init(job_type="leaderboard", **init)
    try:
        run.log(
            {
                f"leaderboard/{name}": wandb.Table(columns=cols, data=data)
                for name, (cols, data) in wandb_tables(rows).items()
            }
        )
    finally:
        if own:
            run.finish()
