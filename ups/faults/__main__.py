"""``python -m ups.faults``: run the fault scenarios and print the table of ``docs/reliability.md``.

    python -m ups.faults                      # every scenario, in a temporary work directory
    python -m ups.faults --only sigterm,disk-full --workdir /tmp/faults
    python -m ups.faults --list

Each scenario runs real ``python -m ups.train`` commands (small 40-step runs on synthetic data) and
reports exit status, time to exit, processes alive 30 s after exit, data files modified (sha256 of
every file in the data directory before and after; UPS's own ``.ups_stats`` cache excluded) and
optimizer steps done twice after a resume. A row passes only with no hang, no orphan and no data
file modified, on top of its own expectation. ``--pythonpath`` runs another checkout's code (the
table before a fix). The whole table (45 rows) takes about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from ups.faults.harness import HUNG, Ctx, Row, changed, data_checksums
from ups.faults.scenarios import SCENARIOS

importlib.import_module("ups.faults.resume_scenarios")  # adds its scenarios to SCENARIOS
importlib.import_module("ups.faults.run_scenarios")
importlib.import_module("ups.faults.reliability_scenarios")  # issue 19's


def prepare(ctx: Ctx) -> None:
    """Synthetic data for burgers1d and pdebench2 in the work directory, generated once."""
    for task in ("burgers1d", "pdebench2"):
        p = ctx.train(ctx.base(f"prepare-{task}", *ctx.generate_flag(), "trainer.max_steps=1", task=task))
        if p.rc != 0:
            sys.exit(f"could not prepare data for {task}:\n{p.stderr[-2000:]}")


def run_one(ctx: Ctx, name: str, issue: str, expected: str, fn) -> Row:
    """Run one scenario; a harness failure is reported in its row, not raised."""
    row = Row(name, issue, expected)
    before = data_checksums(ctx.data)
    start = time.monotonic()
    try:
        fn(ctx, row)
    except Exception as err:  # noqa: BLE001 - the table reports it, the other scenarios go on
        row.ok, row.observed = False, f"harness error: {type(err).__name__}: {err}"
    row.data_changed = changed(before, data_checksums(ctx.data))
    row.ok = row.ok and row.exit != HUNG and not row.orphans and row.data_changed == 0
    row.notes.append(f"scenario took {time.monotonic() - start:.0f} s")
    return row


def markdown(rows: list[Row], header: str) -> str:
    cell = lambda v: "-" if v is None else str(v).replace("|", "\\|")  # noqa: E731
    lines = [
        header,
        "",
        "| # | scenario | expected | observed | exit | time to exit (s) | orphans after 30 s "
        "| data files modified | steps redone | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def order(r: Row) -> tuple:  # "4", "4, 8", "19.3": by the first number, then its item; "-" last
        first = r.issue.split(",")[0].strip()
        return tuple(int(x) for x in first.split(".")) if first.replace(".", "").isdigit() else (999,)

    for r in sorted(rows, key=order):
        lines.append(
            "| "
            + " | ".join(
                cell(v)
                for v in (
                    r.issue,
                    r.scenario,
                    r.expected,
                    r.observed,
                    r.exit,
                    r.seconds,
                    r.orphans,
                    r.data_changed,
                    r.work_lost,
                    "pass" if r.ok else "FAIL",
                )
            )
            + " |"
        )
    passed = sum(r.ok for r in rows)
    lines += ["", f"{passed} of {len(rows)} scenarios as expected."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ups.faults", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated scenario names (default: all)")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--workdir", type=Path, help="where data and runs go (default: a new temporary folder)")
    ap.add_argument("--cap-s", type=float, default=150, help="a command still running after this is a hang")
    ap.add_argument("--pythonpath", help="run the code of another checkout (its root), e.g. before a fix")
    ap.add_argument("--before", action="store_true", help="commands for code without data.generate")
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    args = ap.parse_args(argv)
    if args.list:
        for name, issue, expected, _ in SCENARIOS:
            print(f"{name:34s} [{issue}] {expected}")
        return 0
    chosen = [s for s in SCENARIOS if not args.only or s[0] in args.only.split(",")]
    unknown = set(args.only.split(",")) - {s[0] for s in SCENARIOS} if args.only else set()
    if unknown:
        ap.error(f"unknown scenarios {sorted(unknown)}; see --list")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ups-faults-"))
    ctx = Ctx(work, sys.executable, args.pythonpath, args.before, args.cap_s)
    code = args.pythonpath or str(Path(__file__).resolve().parents[2])
    rev = subprocess.run(["git", "-C", code, "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", code, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    header = (
        f"`python -m ups.faults{' ' + ' '.join(argv or sys.argv[1:]) if (argv or sys.argv[1:]) else ''}` "
        f"on {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; code: {rev.stdout.strip()[:70] or code}"
        f"{' (with uncommitted changes)' if dirty else ''}"
    )
    print(header, flush=True)
    prepare(ctx)
    rows = []
    for name, issue, expected, fn in chosen:
        row = run_one(ctx, name, issue, expected, fn)
        rows.append(row)
        print(f"{'pass' if row.ok else 'FAIL'}  {name}: {row.observed}", flush=True)
    table = markdown(rows, header)
    print("\n" + table)
    (work / "faults.md").write_text(table + "\n")
    (work / "faults.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    print(f"\nwritten: {work / 'faults.md'}, {work / 'faults.json'}")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    from ups.errors import exit_on_error

    with exit_on_error():
        sys.exit(main())
