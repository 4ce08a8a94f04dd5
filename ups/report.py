"""``python -m ups.report <sweep dir>``: the report of a sweep that ended, died, or ran on a cluster.

Writes ``sweep_report.csv``, ``sweep_report.md`` and the ``sweep_*.png`` plots into the sweep
directory (``ups/sweeps/report.py``) and prints the table. The same report is written by a Hydra
callback when a local multirun ends.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ups.report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="a Hydra multirun directory, e.g. multirun/2026-12-02/10-00-00")
    args = parser.parse_args(argv)
    from ups.sweeps.report import write_report

    try:
        paths = write_report(args.sweep_dir)
    except FileNotFoundError as err:
        print(f"Cannot report on {args.sweep_dir}: {err}", file=sys.stderr)
        return 1
    print(paths[1].read_text())
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    from ups.errors import exit_on_error

    with exit_on_error():
        sys.exit(main())
