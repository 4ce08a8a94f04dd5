"""Command-line entry point: ``python -m ups.train [overrides]``, also installed as ``ups-train``.

Hydra composes the config from ``conf/`` (shipped as ``ups.conf``); :func:`ups.runner.run` does
the work, so tests and notebooks call it without a command line.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from ups.config import ConfigError, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="pkg://ups.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train as configured; returns the mean validation nRMSE (the objective for sweepers)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from ups.distributed.launch import launch  # heavy imports after composition: --help and --cfg stay fast
    from ups.training.checkpoint import CheckpointError
    from ups.training.failures import StopTraining

    try:
        metrics = launch(cfg)
    except ConfigError as err:
        print(f"Config error: {err}", file=sys.stderr)
        sys.exit(1)
    except CheckpointError as err:
        print(f"Checkpoint error: {err}", file=sys.stderr)
        sys.exit(1)
    except StopTraining as err:
        print(f"Training stopped: {err}", file=sys.stderr)
        sys.exit(1)
    except ChildFailedError as err:
        print(f"A rank failed (its traceback is above):\n{err.format_msg()}", file=sys.stderr)
        sys.exit(1)
    return metrics.get("val/nrmse/mean")


if __name__ == "__main__":
    main()
