"""``python -m ups.diagnose run=<run dir>``: where a run's error comes from, per task, as JSON and markdown.

Rollout and one-step nRMSE and, for a model with a latent encoder, the floors its autoencoder sets
(true next latent, decoder floor, reconstruction), all in normalised units
(``ups/evaluation/diagnosis.py``). Writes ``<run>/eval/diagnosis.{json,md}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from ups.config import register_configs
from ups.errors import ConfigError, exit_on_error


@dataclass
class DiagnoseConfig:
    """Which run, which checkpoint and split, and how much to measure."""

    run: str = MISSING  # a run directory (holds config.yaml and checkpoints/)
    checkpoint: str = "final"  # final | best | a step folder name such as step_00000400
    split: str = "val"  # val | test (the diagnosis guides design: validation by default)
    eval_samples: Optional[int] = 8  # trajectories per task; 0 or null: all of them
    windows_per_trajectory: Optional[int] = 8  # frames per trajectory the floors are measured at; null: all
    invert_steps: int = 50  # Adam steps on the latent tokens for the decoder floor
    invert_lr: float = 0.05
    batch_size: int = 8
    data_dir: Optional[str] = None  # None: the run's paths.data_dir
    device: str = "auto"  # auto | cpu | cuda
    allow_unverified_checkpoints: bool = False  # load checkpoints that lack checksums.json (trusted sources only)


register_configs()
ConfigStore.instance().store(name="diagnose_schema", node=DiagnoseConfig)


def diagnose_run(cfg: DictConfig) -> list[Path]:
    """Diagnose ``cfg.run``'s checkpoint; returns the files written."""
    from ups.distributed.env import DistEnv, resolve_device
    from ups.evaluation.diagnosis import DiagnosisSettings, diagnose, markdown
    from ups.evaluation.loading import load_run
    from ups.evaluation.suite import write_tables
    from ups.models.spec import spec_of

    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split!r} is not one of test, val")
    device = resolve_device(str(cfg.device), DistEnv(), "device")
    run = load_run(cfg.run, cfg.checkpoint, cfg.data_dir, device, cfg.allow_unverified_checkpoints)
    settings = DiagnosisSettings(
        cfg.eval_samples or None, cfg.windows_per_trajectory, cfg.invert_steps, cfg.invert_lr, cfg.batch_size
    )
    from ups.objectives.next_step import predicts_change

    # As the run's own objective decides: its setting, or the model's choice when it leaves it open.
    residual = predicts_change(run.model, getattr(run.objective, "residual", False))
    results = diagnose(
        run.predict, run.model, run.tasks, residual, cfg.split, device, settings, run.cfg.data.preload_max_gb
    )
    meta = {
        "run": str(cfg.run),
        "checkpoint": str(run.checkpoint.relative_to(Path(cfg.run))),
        "weights": run.source,
        "split": cfg.split,
        "device": str(device),
        "model": run.cfg.model.get("_target_"),
        "latent": spec_of(run.model).latent is not None,
        "objective": type(run.objective).__name__,
        "residual": residual,
        "eval_samples": settings.eval_samples,
        "windows_per_trajectory": settings.windows_per_trajectory,
        "invert_steps": settings.invert_steps,
        "invert_lr": settings.invert_lr,
        "units": "normalised",
    }
    paths = write_tables(Path(cfg.run) / "eval", "diagnosis", results, meta, lambda m: markdown(results, m))
    print(paths[1].read_text())
    return paths


@hydra.main(version_base="1.3", config_path="pkg://ups.conf", config_name="diagnose")
def main(cfg: DictConfig) -> None:
    """Diagnose; a missing run, checkpoint or data directory is one paragraph on stderr and exit 1."""
    with exit_on_error(f"Cannot diagnose {cfg.run}: "):
        for path in diagnose_run(cfg):
            print(path)


if __name__ == "__main__":
    main()
