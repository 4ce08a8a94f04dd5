"""Command-line entry point: ``python -m ups.train [overrides]``, also installed as ``ups-train``.

Hydra composes the config from ``conf/`` (shipped as ``ups.conf``); :func:`ups.runner.run` does
the work, so tests and notebooks call it without a command line.
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ups.config import ConfigError, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="pkg://ups.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train as configured; returns the mean validation nRMSE (the objective for sweepers).

    Every expected failure ends in one paragraph on stderr and exit status 1 (128 + signal for a
    stop signal); the full traceback goes to the run's train.log.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from ups.data.readers import DataFileError
    from ups.distributed.launch import launch  # heavy imports after composition: --help and --cfg stay fast
    from ups.training.checkpoint import CheckpointError
    from ups.training.failures import StopTraining
    from ups.training.signals import Interrupted

    try:
        metrics = launch(cfg)
    except Interrupted as err:
        print(err, file=sys.stderr)
        sys.exit(err.exit_code)
    except ChildFailedError as err:
        print(f"A rank failed (its traceback is above):\n{err.format_msg()}", file=sys.stderr)
        sys.exit(1)
    except (ConfigError, CheckpointError, StopTraining, DataFileError, FileNotFoundError, OSError) as err:
        kind = {ConfigError: "Config error", CheckpointError: "Checkpoint error", StopTraining: "Training stopped",
                DataFileError: "Data error", FileNotFoundError: "Data error"}.get(type(err), "I/O error")
        _traceback_to_log(Path(cfg.paths.output_dir) / "train.log")
        print(f"{kind}: {err}", file=sys.stderr)
        sys.exit(1)
    return metrics.get("val/nrmse/mean")


def _traceback_to_log(log_file: Path) -> None:
    """Append the current exception's traceback to the run's log (the console gets one paragraph)."""
    if log_file.parent.is_dir():
        with log_file.open("a") as f:
            f.write(traceback.format_exc())


if __name__ == "__main__":
    main()
