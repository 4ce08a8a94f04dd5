"""What a finished training run does for the leaderboard (``leaderboard.path``), called by the runner
on rank 0 once ``eval/final_test.json`` is written."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def on_run_finished(cfg: Any, run_dir: str | Path) -> Path | None:
    """Append the run's row to ``leaderboard.path`` (a folder; none: nothing) and, with ``logger=wandb``,
    log the updated tables to the run's own W&B run. Returns the markdown table's path.

    The run has finished and its results are written: a leaderboard that cannot be updated (a full
    disk, W&B unreachable) is a warning, not a failed run."""
    folder = (cfg.get("leaderboard") or {}).get("path")
    if not folder:
        return None
    from ups.leaderboard.store import append_run, publish_wandb, read_rows

    try:
        append_run(folder, run_dir)
    except OSError as err:
        log.warning("leaderboard %s not updated: %s", folder, err)
        return None
    log.info("leaderboard: %s", Path(folder) / "leaderboard.md")
    settings = (cfg.get("logger") or {}).get("wandb")
    if settings:
        try:
            run_id = (Path(run_dir) / "wandb_id.txt").read_text().strip()
            init = {k: settings.get(k) for k in ("project", "entity", "group", "name") if settings.get(k)}
            if settings.get("mode"):
                init["mode"] = settings["mode"]
            publish_wandb(read_rows(folder), id=run_id, resume="allow", dir=str(run_dir), **init)
        except Exception as err:  # noqa: BLE001 - W&B raises many kinds; the run is done either way
            log.warning("leaderboard table not sent to W&B: %s", err)
    return Path(folder) / "leaderboard.md"
