"""Command-line entry point: ``python -m ups.train [overrides]``, also installed as ``ups-train``. Hydra
composes the config from ``conf/`` (``ups.conf``); :func:`ups.runner.run` does the work, importable."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ups.config import register_configs
from ups.distributed.env import slurm_unavailable
from ups.errors import EXPECTED_EXIT, exit_on_error, finish

register_configs()


@hydra.main(version_base="1.3", config_path="pkg://ups.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train as configured; returns the mean validation nRMSE (the objective for sweepers).

    Expected failures: one paragraph on stderr, exit status 1 (128 + signal for a stop signal), the
    traceback in train.log; in a multirun, ``job_status.json`` records them and the sweep goes on.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from ups.distributed.env import slurm_requeue  # heavy imports after composition: --help stays fast
    from ups.launch import launch
    from ups.training.signals import Interrupted

    log_file = Path(cfg.paths.output_dir) / "train.log"
    metrics = None
    with exit_on_error(log_file=log_file, output_dir=cfg.paths.output_dir):
        try:
            metrics = launch(cfg)
        except Interrupted as err:
            requeued = slurm_requeue(err.signum)  # SLURM's time-limit warning: requeue, resume from the checkpoint
            print(err if requeued is None else f"{err}\n{requeued}", file=sys.stderr)
            return finish(cfg.paths.output_dir, err.exit_code, str(err), "requeued" if requeued else "interrupted")
        except ChildFailedError as err:
            rank, failure = err.get_first_failure()
            if failure.exitcode == EXPECTED_EXIT:  # the rank printed its one paragraph already
                message = f"the job stopped: rank {rank} stopped with the error above (traceback in {log_file})"
            else:
                message = f"A rank failed (its traceback is above):\n{err.format_msg()}"
            print(message, file=sys.stderr)
            return finish(cfg.paths.output_dir, 1, message)
    return None if metrics is None else metrics.get("val/nrmse/mean")  # None: a multirun job that failed


def cli() -> None:
    """``python -m ups.train``, ``ups-train``: the SLURM launcher off a cluster is one paragraph, not Hydra's traceback."""
    if message := slurm_unavailable(sys.argv[1:]):
        sys.exit(message)  # on stderr, exit status 1
    main()


if __name__ == "__main__":
    cli()
