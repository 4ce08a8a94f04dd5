"""Reading an exported model (``python -m ups.export``) with no pickle anywhere.

An export folder holds ``model.safetensors`` (the weights: raw tensors and a JSON header, the
format cannot hold code), ``config.yaml`` (the run's resolved config, read by OmegaConf's YAML safe
loader), ``export.json`` (the tasks' input and output sizes, so the model is built without the data,
and the weights' sha256) and the run's evaluation JSON. Nothing else in the folder is opened, so a
pickle placed there is never read. ``ups.load_model(path)`` is :func:`load_model`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ups.errors import CheckpointError
from ups.training.checksums import sha256  # one hashing routine for checkpoints and exports

WEIGHTS, MANIFEST, CONFIG = "model.safetensors", "export.json", "config.yaml"
FORMAT = "ups-export-1"


class ExportError(CheckpointError):
    """A folder that is not a complete, intact UPS export; the message names the file (an expected
    error: one paragraph from every entry point, ``ups/errors.py``)."""


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is an export folder (it holds ``export.json``) rather than a run directory."""
    return (Path(path) / MANIFEST).is_file()


@dataclass
class Export:
    """An export read back: its config, manifest, the model in eval mode and the objective that predicts."""

    cfg: Any
    manifest: dict
    model: torch.nn.Module
    objective: Any

    def predict(self, batch: dict) -> torch.Tensor:
        """The next frame (a bundled model: its next m frames), as the run's last stage predicted it
        (``ups/objectives/``)."""
        return self.objective.predict(self.model, batch)


def read_manifest(path: Path) -> dict:
    """``export.json``, checked: the format, and the weights file against its recorded sha256."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{path / MANIFEST} is unreadable ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{path / MANIFEST} is not a UPS export manifest (format {FORMAT})")
    if not (path / WEIGHTS).is_file():
        raise ExportError(f"{path / WEIGHTS} is missing")
    if sha256(path / WEIGHTS) != manifest.get("sha256"):
        raise ExportError(f"{path / WEIGHTS} does not match the sha256 in {MANIFEST} (damaged or replaced)")
    return manifest


def load_export(path: str | Path, device: str | torch.device = "cpu") -> Export:
    """Build the exported model from its config and manifest and load its weights (strictly)."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from ups.build import build_objectives, model_from_io
    from ups.models.spec import TaskIO
    from ups.training.checkpoint import last_trained_stage

    path = Path(path)
    manifest = read_manifest(path)
    cfg = OmegaConf.load(path / CONFIG)
    io = {name: TaskIO(**sizes) for name, sizes in manifest["tasks"].items()}
    objectives = build_objectives(cfg.stages)
    model = model_from_io(cfg.model, io, objectives)  # as training builds it (ups/build.py), heads included
    try:
        model.load_state_dict(load_file(str(path / WEIGHTS), device=str(device)))
    except RuntimeError as err:
        raise ExportError(
            f"{path / WEIGHTS} does not fit the model {path / CONFIG} describes: {str(err).splitlines()[0][:200]}"
        ) from None
    objective = objectives[last_trained_stage(cfg.stages)]
    return Export(cfg, manifest, model.to(device).eval(), objective)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of an export folder, in eval mode on ``device``; no pickle is read.

    Call it as the objectives do: ``model(task, x, coords, cond, grid=...)`` (``ups/models/spec.py``);
    :func:`load_export` also gives the config and the objective's ``predict``."""
    return load_export(path, device).model
