"""``python -m ups.export run=<run dir> [ckpt=final|best|step_N] [out=<folder>] [data_dir=DIR]``: a model to share.

Writes into ``out`` (default ``<run>/export/<ckpt>``): ``model.safetensors`` (the weights the run
evaluates with, EMA ones if it averaged), ``config.yaml`` (resolved), ``export.json`` (format,
checkpoint, step, the tasks' sizes, the weights' sha256), the run's evaluation of that checkpoint
(``eval/<ckpt>_test.json`` and ``.md``, if it has one) and ``provenance.json``. ``python -m
ups.evaluate run=<out>`` and ``ups.load_model(<out>)`` read it without unpickling anything
(``ups/exported.py``). Reading the *run directory* here goes through its checkpoint, which is
trusted input: export only runs you made or trust (docs/export.md).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

from ups.errors import exit_on_error
from ups.exported import CONFIG, FORMAT, MANIFEST, WEIGHTS, sha256


def export_run(
    run: str | Path,
    ckpt: str = "final",
    out: str | Path | None = None,
    allow_unverified: bool = False,
    data_dir: str | None = None,
) -> Path:
    """Export checkpoint ``ckpt`` of the run's last training stage; returns the export folder.

    The data gives the tasks' sizes: read from ``data_dir``, else the run's ``paths.data_dir``, else
    (a relative one, from another directory) the absolute path its ``provenance.json`` recorded."""
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from ups import provenance
    from ups.build import task_io
    from ups.evaluation.loading import load_run

    run = Path(run)
    if (
        data_dir is None
        and (run / "config.yaml").exists()
        and not Path(OmegaConf.load(run / "config.yaml").paths.data_dir).is_dir()
    ):
        data_dir = provenance.read(run).get("data_dir")
    loaded = load_run(run, ckpt, data_dir, torch.device("cpu"), allow_unverified)
    out = Path(out) if out else run / "export" / ckpt
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "eval").mkdir(parents=True)
    # Clones: safetensors refuses tensors that share memory, and a view's storage may be larger.
    weights = {k: v.detach().clone().contiguous() for k, v in loaded.model.state_dict().items()}
    save_file(weights, str(tmp / WEIGHTS), metadata={"format": FORMAT, "checkpoint": ckpt})
    OmegaConf.save(loaded.cfg, tmp / CONFIG, resolve=True)
    # The sizes the model was built from (ups.build.task_io), so load_export builds the same model.
    tasks = {name: dataclasses.asdict(io) for name, io in task_io(loaded.tasks).items()}
    step = json.loads((loaded.checkpoint / "meta.json").read_text()).get("step")
    manifest = {
        "format": FORMAT,
        "run": str(run.resolve()),
        "checkpoint": str(loaded.checkpoint.relative_to(run)),
        "weights": loaded.source,
        "step": step,
        "tasks": tasks,
        "sha256": sha256(tmp / WEIGHTS),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for name in (f"eval/{ckpt}_test.json", f"eval/{ckpt}_test.md", "provenance.json"):
        if (run / name).is_file():
            shutil.copyfile(run / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


USAGE = "usage: python -m ups.export run=<run dir> [ckpt=final|best|step_N] [out=<folder>] [data_dir=DIR]"


def _parse(argv: list[str]) -> dict[str, str]:
    if any(a in ("-h", "--help") for a in argv):
        print(f"{USAGE}\n\n{__doc__}")
        raise SystemExit(0)
    opts = {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in ("run", "ckpt", "out", "data_dir", "allow_unverified_checkpoints"):
            raise SystemExit(f"{USAGE}; {arg!r} is not one of these")
        opts[key] = value
    if "run" not in opts:
        raise SystemExit(f"{USAGE}; run= is required")
    return opts


def main(argv: list[str] | None = None) -> int:
    """Export; a missing run or checkpoint is one paragraph on stderr and exit 1 (ups/errors.py)."""
    opts = _parse(list(sys.argv[1:] if argv is None else argv))
    with exit_on_error(f"Cannot export {opts['run']}: "):
        out = export_run(
            opts["run"],
            opts.get("ckpt", "final"),
            opts.get("out"),
            opts.get("allow_unverified_checkpoints", "false").lower() == "true",
            opts.get("data_dir"),
        )
        print(f"exported to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
