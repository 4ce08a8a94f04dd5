"""CLI: python -m ups.data.synth tasks=pdebench11 out=<dir> [n_samples=..] [nx=..] [nt=..]
[seed=..] [overwrite=true]

`tasks` is a comma-separated list of family names and/or the groups pdebench2, pdebench11.
Prints one line per family (files, shapes, seconds) and a total; exits 2 on bad input.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import h5py

from . import GENERATORS, GROUPS, check_sizes, expand_tasks, generate

USAGE = (
    "usage: python -m ups.data.synth tasks=<family|group>[,...] out=<dir> "
    "[n_samples=N] [nx=N] [nt=N] [seed=N] [overwrite=true|false]"
)
INT_KEYS = ("n_samples", "nx", "nt", "seed")


def parse(argv: list[str]) -> dict:
    """Parse key=value arguments into a dict of typed values; ValueError on anything else."""
    opts: dict = {"seed": 0, "overwrite": False}
    for arg in argv:
        key, sep, val = arg.partition("=")
        key = key.lstrip("-").replace("-", "_")
        if not sep or not val:
            raise ValueError(f"expected key=value, got {arg!r}")
        if key in INT_KEYS:
            try:
                opts[key] = int(val)
            except ValueError:
                raise ValueError(f"{key} must be an integer, got {val!r}") from None
            if key != "seed" and opts[key] <= 0:
                raise ValueError(f"{key} must be positive, got {val!r}")
        elif key == "overwrite":
            low = val.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"overwrite must be true or false, got {val!r}")
            opts[key] = low in ("true", "1", "yes")
        elif key in ("tasks", "out"):
            opts[key] = val
        else:
            raise ValueError(f"unknown option {key!r}")
    for req in ("tasks", "out"):
        if req not in opts:
            raise ValueError(f"missing {req}=")
    opts["tasks"] = expand_tasks(opts["tasks"])
    return opts


def config_sizes(family: str) -> dict:
    """The synthetic sizes and generator options ``conf/task/<family>.yaml`` asks for.

    Training reads files with PDEBench's default strides, so the CLI writes the same files the
    training run would generate; explicit ``n_samples``/``nx``/``nt`` arguments still win.
    """
    from importlib.resources import files

    from omegaconf import OmegaConf

    path = files("ups.conf") / "task" / f"{family}.yaml"
    if not path.is_file():
        return {}
    synth = OmegaConf.load(str(path)).datasets[family].get("synth") or {}
    sizes = {k: v for k, v in synth.items() if k in ("n_samples", "nx", "nt") and v is not None}
    return {**sizes, **OmegaConf.to_container(synth.get("options") or OmegaConf.create({}))}


def describe(path: Path) -> str:
    """'name [key(shape), ...]' for a written file: its top-level datasets, or the group count
    and the first group's data shape."""
    parts = []
    with h5py.File(path, "r") as f:
        for k in f:
            obj = f[k]
            if isinstance(obj, h5py.Dataset):
                parts.append(f"{k}{tuple(obj.shape)}")
        groups = [k for k in f if isinstance(f[k], h5py.Group)]
        if groups:
            parts.append(f"{len(groups)} groups x data{tuple(f[groups[0]]['data'].shape)}")
    return f"{path.name} [{', '.join(parts)}]"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        print(f"families: {', '.join(GENERATORS)}; groups: {', '.join(GROUPS)}")
        return 0
    try:
        opts = parse(argv)
        check_sizes(opts.get("n_samples"), opts.get("nx"), opts.get("nt"))
    except ValueError as e:
        print(f"error: {e} (run with --help for usage)", file=sys.stderr)
        return 2
    given = {k: opts.get(k) for k in ("n_samples", "nx", "nt") if opts.get(k) is not None}
    t_all = time.perf_counter()
    for fam in opts["tasks"]:
        t0 = time.perf_counter()
        kw = {**config_sizes(fam), **given, "seed": opts["seed"], "overwrite": opts["overwrite"]}
        try:
            paths = generate(fam, opts["out"], **kw)
        except OSError as e:  # unwritable or invalid out=: one line, no traceback
            print(f"error: {fam}: cannot write to {opts['out']}: {e}", file=sys.stderr)
            return 1
        dt = time.perf_counter() - t0
        for i, p in enumerate(paths):
            lead = f"{fam:<13s} {dt:7.2f}s " if i == 0 else " " * 23
            print(f"{lead} {describe(p)}", flush=True)
    print(f"{'total':<13s} {time.perf_counter() - t_all:7.2f}s  ({len(opts['tasks'])} families -> {opts['out']})")
    return 0


if __name__ == "__main__":
    from ups.errors import exit_on_error

    with exit_on_error():
        sys.exit(main())
