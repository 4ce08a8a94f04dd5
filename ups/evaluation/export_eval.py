"""An export folder (``python -m ups.export``) as a run to evaluate: the exported model on the data its
config names, for ``python -m ups.evaluate run=<export>``. No pickle is read (``ups/exported.py``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ups import provenance
from ups.evaluation.loading import LoadedRun
from ups.exported import WEIGHTS, ExportError, load_export


def load_exported_run(
    path: str | Path, data_dir: str | None = None, device: torch.device | str | None = None
) -> LoadedRun:
    """The export's model and objective with the tasks of its config, read (never generated) from
    ``data_dir``, the config's ``paths.data_dir`` or the absolute one of its ``provenance.json``."""
    from ups.build import build_compute, build_objectives, build_tasks, task_io

    path = Path(path)
    exp = load_export(path, "cpu")
    exp.cfg.data.generate = False
    if data_dir is None and not Path(exp.cfg.paths.data_dir).is_dir():  # relative, and read from elsewhere
        data_dir = provenance.read(path).get("data_dir")  # the absolute path the run recorded
    exp.cfg.paths.data_dir = str(data_dir or exp.cfg.paths.data_dir)
    if not Path(exp.cfg.paths.data_dir).is_dir():
        raise FileNotFoundError(
            f"the data directory {exp.cfg.paths.data_dir} of {path / 'config.yaml'} is not here; "
            "point at the data files with data_dir=DIR"
        )
    tasks = build_tasks(exp.cfg, path)
    sizes = {n: [io.in_channels, io.out_channels, list(io.grid)] for n, io in task_io(tasks).items()}
    wanted = {n: [s["in_channels"], s["out_channels"], s["grid"]] for n, s in exp.manifest["tasks"].items()}
    if sizes != wanted:
        raise ExportError(
            f"the data in {exp.cfg.paths.data_dir} does not have the sizes the model was exported for: "
            f"{sizes} against {wanted}"
        )
    compute = build_compute(exp.cfg.hardware, device=device if device is not None else "auto")  # as load_run
    return LoadedRun(
        exp.cfg,
        tasks,
        exp.model.to(compute.device),
        exp.objective,
        path / WEIGHTS,
        f"{path / WEIGHTS} (exported)",
        compute,
        build_objectives(exp.cfg.stages),
    )
