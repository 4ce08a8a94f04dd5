"""The report of a sweep: one row per job, as CSV and markdown, and plots.

A sweep directory holds one directory per job (Hydra's ``<sweep dir>/<job number>``), each a UPS
run directory. A row takes the job's overrides (``.hydra/overrides.yaml``), its resolved
``config.yaml``, the training records of ``metrics.jsonl`` (world size, per-device batch,
accumulation, global batch, samples/s, peak memory), the last validation record and
``eval/final_test.json`` (test nRMSE, training wall-clock). Status: ``completed`` (a final test
evaluation exists), ``failed``, ``interrupted`` or ``requeued`` (``job_status.json`` says so, with
the error or the stop), or ``unfinished`` (a job that died or still runs; the last line of its
``train.log`` is shown). No job is dropped.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import platform
from pathlib import Path
from typing import Any

from ups.errors import JOB_STATUS
from ups.evaluation.report import timeline
from ups.records import read_records

log = logging.getLogger(__name__)

BASE_COLUMNS = (
    "job",
    "status",
    "overrides",
    "world_size",
    "batch_size",
    "accum_steps",
    "global_batch",
    "samples_per_s",
    "step_time_s",
    "peak_memory_mb",
    "wall_clock_s",
    "steps",
    "error",
)


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()] if path.exists() else []
    return lines[-1].strip() if lines else ""


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    """The job directories of a sweep (those Hydra wrote a ``.hydra/`` into), in job order."""
    jobs = [p.parent.parent for p in Path(sweep_dir).glob("*/.hydra/overrides.yaml")]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def job_row(job: Path) -> dict[str, Any]:
    """One job's row (see the module docstring); numbers missing for a job that never trained are None."""
    from omegaconf import OmegaConf

    overrides = list(OmegaConf.load(job / ".hydra" / "overrides.yaml") or [])
    row: dict[str, Any] = {k: None for k in BASE_COLUMNS}
    row.update(job=job.name, overrides=" ".join(overrides), error="")
    cfg_path = job / "config.yaml"
    if cfg_path.exists():
        cfg = OmegaConf.to_container(OmegaConf.load(cfg_path))
        p, t = cfg.get("parallelism", {}), cfg.get("trainer", {})
        row.update(
            world_size=p.get("nodes", 1) * p.get("ranks_per_node", 1),
            batch_size=t.get("batch_size"),
            accum_steps=t.get("accum_steps"),
        )
    records = read_records(job) if (job / "metrics.jsonl").exists() else []
    # A restarted job logs the steps after its checkpoint again: each step counts once, its last record.
    train = list(timeline(records)["train"].values())
    if train:
        last = train[-1]
        row.update({k: last.get(k) for k in ("world_size", "batch_size", "accum_steps", "global_batch")})
        timed = train[1:] or train  # the first window holds start-up and warm-up
        row["samples_per_s"] = sum(r["samples_per_s"] for r in timed) / len(timed)
        row["step_time_s"] = last["global_batch"] / row["samples_per_s"] if row["samples_per_s"] else None
        row["peak_memory_mb"] = max((r.get("peak_memory_mb") or 0.0) for r in train) or None
        row["steps"] = last["step"]
    if row["global_batch"] is None and None not in (row["batch_size"], row["accum_steps"], row["world_size"]):
        row["global_batch"] = row["batch_size"] * row["accum_steps"] * row["world_size"]
    val = [r for r in records if r.get("kind") == "eval" and r.get("split") == "val"]
    for key, value in (val[-1] if val else {}).items():
        if key.startswith("nrmse/"):
            row[f"val/{key}"] = value
    final = job / "eval" / "final_test.json"
    status = json.loads((job / JOB_STATUS).read_text()) if (job / JOB_STATUS).exists() else {}
    if final.exists():
        result = json.loads(final.read_text())
        row["status"], row["wall_clock_s"] = "completed", result["meta"].get("train_seconds")
        row.update(
            {
                f"test/{k}": v
                for k, v in result["results"]["model"].items()
                if k.startswith("nrmse/") and isinstance(v, (int, float))
            }
        )
    elif status.get("status") in ("failed", "interrupted", "requeued"):  # requeued: it resumes when it restarts
        row["status"], row["error"] = status["status"], ((status.get("error") or "").strip().splitlines() or [""])[-1]
    else:
        row["status"], row["error"] = "unfinished", _last_line(job / "train.log")
    return row


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every job's row; a job whose directory cannot be read still gets a row saying why."""
    rows = []
    for job in job_dirs(sweep_dir):
        try:
            rows.append(job_row(job))
        except (OSError, ValueError, KeyError) as err:
            rows.append(
                {
                    **{k: None for k in BASE_COLUMNS},
                    "job": job.name,
                    "status": "unreadable",
                    "overrides": "",
                    "error": f"{type(err).__name__}: {err}",
                }
            )
    return rows


def _columns(rows: list[dict]) -> list[str]:
    extra = sorted({k for r in rows for k in r if k not in BASE_COLUMNS})
    return [c for c in BASE_COLUMNS if c != "error"] + extra + ["error"]


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|")


def markdown(rows: list[dict], meta: dict) -> str:
    """The report as markdown: what was swept, one row per job, and the failures spelled out."""
    cols = _columns(rows)
    done = sum(r["status"] == "completed" for r in rows)
    lines = ["# Sweep report", ""] + [f"- {k}: {v}" for k, v in meta.items()]
    lines += [
        f"- jobs: {len(rows)}, completed: {done}, not completed: {len(rows) - done}",
        "",
        "samples/s: mean over the training records after the first; step time: global batch / samples/s; "
        "peak memory: the largest of the job's records (rank 0; CUDA allocated, or the process's RSS on CPU); "
        "wall-clock: training time of the run.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    failed = [r for r in rows if r["status"] != "completed"]
    if failed:
        lines += ["", "## Jobs that did not complete", ""]
        lines += [
            f"- job {r['job']} ({r['status']}): `{r['overrides']}`: {r['error'] or 'no error recorded'}" for r in failed
        ]
    return "\n".join(lines) + "\n"


def write_report(sweep_dir: str | Path, rows: list[dict] | None = None) -> list[Path]:
    """``sweep_report.csv``, ``sweep_report.md`` and, with matplotlib, ``sweep_*.png`` in the sweep dir,
    from ``rows`` (default: :func:`collect`)."""
    from ups.sweeps.plots import plot_sweep

    sweep = Path(sweep_dir)
    rows = collect(sweep) if rows is None else rows
    if not rows:
        raise FileNotFoundError(f"{sweep} holds no job directories (<job>/.hydra/overrides.yaml): not a sweep")
    meta = {
        "sweep": str(sweep.resolve()),
        "written": dt.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
    }
    cols = _columns(rows)
    paths = [sweep / "sweep_report.csv", sweep / "sweep_report.md"]
    with paths[0].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows([{c: r.get(c) for c in cols} for r in rows])
    paths[1].write_text(markdown(rows, meta))
    try:
        paths += plot_sweep(rows, sweep)
    except ImportError as err:
        log.info("sweep plots not drawn: %s", err)
    return paths
