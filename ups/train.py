"""Command-line entry point: ``python -m ups.train [overrides]``, also installed as ``ups-train``.

Hydra composes the config from ``conf/`` (shipped as ``ups.conf``); :func:`ups.runner.run` does the
work, so tests and notebooks call it without a command line."""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ups.config import register_configs
from ups.errors import EXPECTED_EXIT, finish, in_multirun, report_expected

register_configs()


@hydra.main(version_base="1.3", config_path="pkg://ups.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Train as configured; returns the mean validation nRMSE (the objective for sweepers).

    Expected failures: one paragraph on stderr, exit status 1 (128 + signal for a stop signal), the
    traceback in train.log; in a multirun, ``job_status.json`` records them and the sweep goes on.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from ups.distributed.env import slurm_requeue  # heavy imports after composition: --help stays fast
    from ups.distributed.launch import launch
    from ups.training.signals import Interrupted

    log_file = Path(cfg.paths.output_dir) / "train.log"
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
    except Exception as err:  # noqa: BLE001 - expected errors get one paragraph; others re-raise
        message = report_expected(err, log_file)
        if message is None:
            if not in_multirun():
                raise
            traceback.print_exc()  # a bug: its traceback, and the sweep goes on with the next job
            message = f"{type(err).__name__}: {err}"
        return finish(cfg.paths.output_dir, getattr(err, "exit_code", 1), message)  # a gate: 4 (ups/gates.py)
    return metrics.get("val/nrmse/mean")


if __name__ == "__main__":
    main()
