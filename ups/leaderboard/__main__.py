"""``python -m ups.leaderboard <dirs...> [--out DIR] [--wandb PROJECT]``: rank every finished run found.

Scans the folders for run directories (single runs, multirun jobs, ``launch/compare.py`` runs; see
``rows.py``), merges the rows training appended to any leaderboard folder among them
(``leaderboard.path``), and writes ``leaderboard.md`` and ``leaderboard.csv`` into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ups.errors import exit_on_error


def main(argv: list[str] | None = None) -> int:
    """Scan, rank and write the tables; a folder that cannot be read is one paragraph (ups/errors.py)."""
    with exit_on_error("Cannot build the leaderboard: "):
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ups.leaderboard", description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", help="folders to scan, e.g. outputs multirun compare")
    parser.add_argument(
        "--out", type=Path, default=Path("leaderboard"), help="where the tables go (default: leaderboard/)"
    )
    parser.add_argument("--wandb", metavar="PROJECT", help="also log the tables to a new W&B run in PROJECT")
    args = parser.parse_args(argv)
    from ups.leaderboard.rows import rows_of
    from ups.leaderboard.store import publish_wandb, read_rows, write_tables

    missing = [d for d in args.dirs if not Path(d).is_dir()]
    args.dirs = [d for d in args.dirs if d not in missing]
    if missing:  # e.g. no compare/ yet: the others still make a leaderboard
        print(f"not a directory, skipped: {', '.join(missing)}", file=sys.stderr)
    if not args.dirs:
        print("Cannot build the leaderboard: none of the folders given exists", file=sys.stderr)
        return 1
    rows = {r["run"]: r for d in [*args.dirs, args.out] if Path(d).is_dir() for r in read_rows(d)}
    rows.update({r["run"]: r for r in rows_of(args.dirs)})  # what the run directories say now wins
    if not rows:
        print(f"No run directories (a folder holding config.yaml) under {' '.join(args.dirs)}", file=sys.stderr)
        return 1
    paths = write_tables(args.out, list(rows.values()), " ".join(args.dirs))
    if args.wandb:
        publish_wandb(list(rows.values()), project=args.wandb)
    print(paths[0].read_text())
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
