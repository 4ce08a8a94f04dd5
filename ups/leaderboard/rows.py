"""One leaderboard row per run directory, read from the files a run leaves.

A run directory is any folder holding a ``config.yaml`` written by UPS: a single run
(``outputs/<date>/<time>``), a multirun job (``multirun/<date>/<time>/<n>``), a run of
``launch/compare.py`` (``<out>/<option>/seed<k>``). Its row takes ``config.yaml`` (task group,
model, stages, seed), ``eval/final_test.json`` (test rollout and one-step nRMSE per task and their
mean, the trivial predictors, parameters, steps, training wall-clock, global batch),
``provenance.json`` (commit, dirty tree, versions) and, for a run that did not finish,
``job_status.json``, ``eval/gates.json`` and the last line of ``train.log``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable

from ups import provenance

TRIVIAL = ("persistence", "mean_field")
GATES_FILE = "eval/gates.json"  # written by a run whose gates failed (status "gated")
SKIP_DIRS = {"checkpoints", ".hydra", "eval", "latent_cache", "wandb", "report", ".ups_stats", "data", "export"}


def find_runs(roots: Iterable[str | Path]) -> list[Path]:
    """Every run directory under ``roots`` (a root may itself be one), each once, in path order."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a directory")
        stack = [root]
        while stack:
            d = stack.pop()
            if (d / "config.yaml").is_file() and not (d / "export.json").is_file():  # an export is not a run
                found.add(d.resolve())
            try:  # a run holds no runs, but a compare folder's option folder holds seeds: keep walking
                stack += [p for p in d.iterdir() if p.is_dir() and p.name not in SKIP_DIRS and not p.is_symlink()]
            except PermissionError:
                continue
    return sorted(found)


def config_hash(cfg: dict) -> str:
    """12 hex of the sha256 of the resolved config without ``paths`` (where a run wrote and read is not
    what it was): two runs with the same hash trained the same configuration, seed included."""
    clean = {k: v for k, v in cfg.items() if k != "paths"}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()] if path.exists() else []
    return lines[-1].strip()[:300] if lines else ""


def _why_not_ranked(run: Path, results: dict | None) -> tuple[str, str] | None:
    """(status, why) for a run that has no rankable result; None for one that has."""
    gates, final = run / GATES_FILE, run / "eval" / "final_test.json"
    # A later evaluation (a rerun with gates=none or other gates) supersedes a gate's verdict.
    if gates.exists() and (not final.exists() or gates.stat().st_mtime > final.stat().st_mtime):
        g = json.loads(gates.read_text())
        if not g.get("passed", True):
            return "gated", "; ".join(g.get("failed") or []) or "a gate failed"
    status = json.loads((run / "job_status.json").read_text()) if (run / "job_status.json").exists() else {}
    if results is None:
        if status.get("status") in ("failed", "interrupted", "requeued"):
            message = (status.get("error") or "").strip().splitlines() or [""]
            diverged = "non-finite" in message[-1] or "diverged" in message[-1]
            return ("diverged" if diverged else status["status"]), message[-1][:300]
        return "unfinished", _last_line(run / "train.log") or "no eval/final_test.json (still running, or killed)"
    mean = results["model"].get("nrmse/mean")
    if not _finite(mean):
        return "diverged", f"test nRMSE mean is {mean}"
    return None


def _model_label(run: Path, cfg: dict, prov: dict) -> str:
    """``LatentSurrogate (tiny)``: the model's class and, where recorded, the config option chosen."""
    target = str((cfg.get("model") or {}).get("_target_", "?")).rsplit(".", 1)[-1]
    choice = (prov.get("choices") or {}).get("model")
    hydra_file = run / ".hydra" / "hydra.yaml"
    if choice is None and hydra_file.exists():
        from omegaconf import OmegaConf

        choice = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.choices.model")
    return f"{target} ({choice})" if choice else target


def run_row(run: str | Path) -> dict[str, Any]:
    """The row of one run directory: identity, budget, provenance and, when finished, its test numbers.

    ``status`` is ``ranked`` for a run with a finite test evaluation; otherwise ``gated``,
    ``diverged``, ``failed``, ``interrupted``, ``requeued`` or ``unfinished``, with ``why``.
    """
    from omegaconf import OmegaConf

    run = Path(run)
    cfg = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"), resolve=False)
    stages = [name for name, s in (cfg.get("stages") or {}).items() if (s or {}).get("steps") != 0]
    prov = provenance.read(run)
    row: dict[str, Any] = {
        "group": (cfg.get("task") or {}).get("name", "?"),
        "model": _model_label(run, cfg, prov),
        "stage": "+".join(stages),
        "seed": (cfg.get("trainer") or {}).get("seed"),
        "config_hash": config_hash(cfg),
        "commit": (prov.get("commit") or "")[:10] or None,
        "dirty": prov.get("dirty"),
        "torch": (prov.get("versions") or {}).get("torch"),
        "world_size": prov.get("world_size"),
        "run": str(run),
        "tasks": list(((cfg.get("task") or {}).get("datasets") or {})),
    }
    final = run / "eval" / "final_test.json"
    result = json.loads(final.read_text()) if final.exists() else None
    if result is not None:
        meta, res = result["meta"], result["results"]
        steps, batch = meta.get("step"), meta.get("global_batch")
        row.update(
            parameters=meta.get("parameters"),
            steps=steps,
            wall_clock_s=meta.get("train_seconds"),
            samples_seen=steps * batch if _finite(steps) and _finite(batch) else None,
            synthetic=bool(meta.get("synthetic_data")),
        )
        for task in row["tasks"] + ["mean"]:
            row[f"rollout/{task}"] = res["model"].get(f"nrmse/{task}")
            row[f"one_step/{task}"] = res["model"].get(f"one_step/nrmse/{task}")
            for p in TRIVIAL:
                row[f"{p}/{task}"] = res.get(p, {}).get(f"nrmse/{task}")
    why = _why_not_ranked(run, result and result["results"])
    row["status"], row["why"] = ("ranked", "") if why is None else why
    return row


def rows_of(roots: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The rows of every run under ``roots``; an unreadable run still gets a row saying why."""
    out = []
    for run in find_runs(roots):
        try:
            out.append(run_row(run))
        except (OSError, ValueError, KeyError, TypeError) as err:
            out.append({"group": "?", "run": str(run), "status": "unreadable", "why": f"{type(err).__name__}: {err}"})
    return out
