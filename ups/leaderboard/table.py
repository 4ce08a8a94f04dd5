"""The leaderboard's tables: one per task group, sorted by mean test rollout nRMSE, a rank per task,
the trivial predictors as rows, and the runs that were not ranked listed apart with why."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from ups.leaderboard.rows import TRIVIAL

ID_COLUMNS = ("rank", "model", "stage", "parameters", "steps", "wall_clock_s", "samples_seen", "seed")
TAIL_COLUMNS = ("commit", "dirty", "config_hash", "run")
TRIVIAL_NAMES = {"persistence": "persistence (trivial)", "mean_field": "training-mean field (trivial)"}


def _key(v: Any) -> float:
    """Sort key of an nRMSE: missing or NaN last."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else math.inf


def by_group(rows: list[dict]) -> dict[str, list[dict]]:
    """Ranked rows per task group, best mean rollout first (ties: one-step, then the run path)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("status") == "ranked":
            groups.setdefault(r["group"], []).append(r)
    for group in groups.values():
        group.sort(key=lambda r: (_key(r.get("rollout/mean")), _key(r.get("one_step/mean")), r["run"]))
        for i, r in enumerate(group, 1):
            r["rank"] = i
        for task in tasks_of(group):  # rank per task: 1 for the lowest rollout nRMSE on it
            order = sorted(
                (r for r in group if _key(r.get(f"rollout/{task}")) < math.inf),
                key=lambda r: _key(r.get(f"rollout/{task}")),
            )
            for i, r in enumerate(order, 1):
                r[f"rank/{task}"] = i
    return dict(sorted(groups.items()))


def tasks_of(group: list[dict]) -> list[str]:
    """The tasks of a group in the order its runs list them."""
    seen: list[str] = []
    for r in group:
        seen += [t for t in r.get("tasks", []) if t not in seen]
    return seen


def columns(group: list[dict]) -> list[str]:
    """Every column of a group's table (the CSV has them all; the markdown the same, less the trivial)."""
    tasks = tasks_of(group) + ["mean"]
    per_task = [c for t in tasks for c in (f"rollout/{t}", f"rank/{t}", f"one_step/{t}")]
    per_task = [c for c in per_task if c != "rank/mean"]
    trivial = [f"{p}/{t}" for p in TRIVIAL for t in tasks]
    return ["group", *ID_COLUMNS, *per_task, *trivial, "torch", "world_size", *TAIL_COLUMNS]


def fmt(v: Any) -> str:
    """A cell: 4 significant digits, – for missing or NaN, pipes escaped."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|")


def _trivial_rows(group: list[dict]) -> list[dict]:
    """Persistence and the training-mean field as rows, from the best run's evaluation (every run of a
    group reads the same splits; a run evaluated on other data is the reader's to notice in the CSV)."""
    best = group[0]
    return [
        {"model": TRIVIAL_NAMES[p], **{f"rollout/{t}": best.get(f"{p}/{t}") for t in tasks_of(group) + ["mean"]}}
        for p in TRIVIAL
    ]


def markdown(rows: list[dict], meta: dict[str, Any]) -> str:
    """The leaderboard as markdown: per group a table, then the runs not ranked."""
    lines = (
        ["# Leaderboard", ""]
        + [f"- {k}: {v}" for k, v in meta.items()]
        + [
            "",
            "Test split, physical units, conditioning frames excluded. rollout: autoregressive nRMSE; "
            "one step: teacher-forced; rank: per task, 1 = lowest rollout nRMSE; sorted by the mean rollout nRMSE. "
            "Samples seen = steps x global batch; wall-clock: training time. commit* = uncommitted changes. "
            "config: hash of config.yaml without paths.",
            "",
        ]
    )
    for name, group in by_group(rows).items():
        tasks = tasks_of(group)
        head = ["rank", "model", "stage", "params", "steps", "wall-clock s", "samples seen", "seed"]
        head += [f"{t} ({kind})" for t in tasks for kind in ("rollout", "rank", "one step")]
        head += ["mean rollout", "mean one step", "commit", "config", "run"]
        lines += [f"## {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in group + _trivial_rows(group):
            commit = f"{r['commit']}{'*' if r.get('dirty') else ''}" if r.get("commit") else None
            cells = [
                r.get("rank"),
                r.get("model"),
                r.get("stage"),
                r.get("parameters"),
                r.get("steps"),
                r.get("wall_clock_s"),
                r.get("samples_seen"),
                r.get("seed"),
            ]
            cells += [r.get(f"{kind}/{t}") for t in tasks for kind in ("rollout", "rank", "one_step")]
            cells += [r.get("rollout/mean"), r.get("one_step/mean"), commit, r.get("config_hash"), r.get("run")]
            lines.append("| " + " | ".join(fmt(c) for c in cells) + " |")
        lines.append("")
    apart = [r for r in rows if r.get("status") != "ranked"]
    if apart:
        lines += [
            "## Not ranked: failed, diverged, gated out or unfinished",
            "",
            "| group | status | why | run |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {fmt(r.get('group'))} | {r['status']} | {fmt(r.get('why') or '')} | {r['run']} |"
            for r in sorted(apart, key=lambda r: (r.get("group") or "", r["run"]))
        ]
    return "\n".join(lines).rstrip() + "\n"


def to_csv(rows: list[dict]) -> str:
    """Every row as CSV: the ranked ones of every group with all columns, then the others (status, why)."""
    groups = by_group(rows)
    cols: list[str] = ["status", "why"]
    for group in groups.values():
        cols += [c for c in columns(group) if c not in cols]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for group in groups.values():
        writer.writerows(group)
    writer.writerows(r for r in rows if r.get("status") != "ranked")
    return out.getvalue()
