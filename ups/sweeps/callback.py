"""A Hydra callback that writes the sweep report when a multirun ends (``conf/train.yaml``)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """``on_multirun_end``: write ``sweep_report.{csv,md}`` and the plots into the sweep directory,
    print the table's path and the jobs that did not complete; exit 1 if any job failed, so a
    scripted sweep notices."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from ups.sweeps.report import collect, write_report

        sweep_dir = config.hydra.sweep.dir
        rows = collect(sweep_dir)
        try:
            paths = write_report(sweep_dir, rows)
        except FileNotFoundError as err:  # no job got as far as writing its directory
            log.warning("no sweep report: %s", err)
            return
        failed = [r for r in rows if r["status"] != "completed"]
        print(f"sweep report: {paths[1]} ({len(rows) - len(failed)} of {len(rows)} jobs completed)", flush=True)
        for r in failed:
            print(f"  job {r['job']} {r['status']}: {r['overrides']}: {r['error']}", file=sys.stderr)
        if failed:
            sys.exit(1)
