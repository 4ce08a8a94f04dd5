"""The leaderboard: rows read from run directories of every layout, ranked per task group with the
trivial predictors, failed/diverged/gated runs apart, concurrent appends that lose nothing, W&B tables."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import types
from pathlib import Path

from omegaconf import OmegaConf

from ups.leaderboard.rows import config_hash, find_runs, rows_of
from ups.leaderboard.store import append_run, publish_wandb, read_rows

TASKS = ("advection1d", "darcy2d")


def fake_run(
    path: Path,
    rollout: dict | None,
    *,
    model: str = "ups.models.fno.FNO",
    seed: int = 0,
    group: str = "pdebench2",
    status: dict | None = None,
    gates: dict | None = None,
) -> Path:
    """A run directory as training leaves it: config.yaml, eval/final_test.json (if ``rollout``), provenance."""
    path.mkdir(parents=True)
    cfg = {
        "task": {"name": group, "datasets": {t: {} for t in TASKS}},
        "model": {"_target_": model},
        "stages": {"operator": {"steps": None}},
        "trainer": {"seed": seed},
        "paths": {"output_dir": str(path)},
    }
    OmegaConf.save(OmegaConf.create(cfg), path / "config.yaml")
    (path / "provenance.json").write_text(
        json.dumps({"commit": "abcdef1234567", "dirty": True, "world_size": 1, "versions": {"torch": "2.13.0"}})
    )
    if rollout is not None:
        model_res = {f"nrmse/{t}": v for t, v in rollout.items()}
        model_res.update({f"one_step/nrmse/{t}": v / 2 for t, v in rollout.items()})
        trivial = {f"nrmse/{t}": 1.0 for t in rollout}
        (path / "eval").mkdir()
        (path / "eval" / "final_test.json").write_text(
            json.dumps(
                {
                    "meta": {"parameters": 1000, "step": 50, "global_batch": 8, "train_seconds": 12.5},
                    "results": {"model": model_res, "persistence": trivial, "mean_field": trivial},
                }
            )
        )
    if status is not None:
        (path / "job_status.json").write_text(json.dumps(status))
    if gates is not None:
        (path / "eval").mkdir(exist_ok=True)
        (path / "eval" / "gates.json").write_text(json.dumps(gates))
    return path


def scores(a: float, b: float) -> dict:
    return {"advection1d": a, "darcy2d": b, "mean": (a + b) / 2}


def test_runs_of_every_layout_are_ranked_per_task_with_failures_apart(tmp_path: Path) -> None:
    fake_run(tmp_path / "outputs" / "2026-12-04" / "10-00-00", scores(0.3, 0.1), model="ups.models.unet.UNet")
    fake_run(tmp_path / "multirun" / "2026-12-04" / "11-00-00" / "0", scores(0.1, 0.4))
    fake_run(
        tmp_path / "multirun" / "2026-12-04" / "11-00-00" / "1",
        None,
        status={"status": "failed", "error": "Config error: optim.lr must be a finite number"},
    )
    fake_run(tmp_path / "compare" / "small" / "seed0", scores(0.2, 0.2), model="ups.models.surrogate.LatentSurrogate")
    fake_run(tmp_path / "compare" / "small" / "seed1", scores(float("nan"), 0.2), seed=1)
    fake_run(
        tmp_path / "compare" / "gated" / "seed0",
        scores(0.05, 0.05),
        gates={"passed": False, "failed": ["beats_persistence: darcy2d 0.9 >= 0.5"]},
    )
    fake_run(tmp_path / "outputs" / "other", scores(0.5, 0.5), group="burgers1d")
    (tmp_path / "outputs" / "other" / "checkpoints" / "x").mkdir(parents=True)  # not scanned as a run
    shared = fake_run(tmp_path / "outputs" / "shared_model", scores(0.01, 0.01))  # an export (python -m ups.export)
    (shared / "export.json").write_text("{}")
    out = tmp_path / "board"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ups.leaderboard",
            str(tmp_path / "outputs"),
            str(tmp_path / "multirun"),
            str(tmp_path / "compare"),
            str(tmp_path / "absent"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and f"not a directory, skipped: {tmp_path / 'absent'}" in proc.stderr, proc.stderr
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    ranked = [r for r in rows if r["status"] == "ranked" and r["group"] == "pdebench2"]
    # mean rollout 0.2 (compare seed0), 0.2 (the UNet run: one step 0.1 as well, tie broken by path), 0.25
    assert [(r["rank"], r["model"], r["rank/advection1d"], r["rank/darcy2d"]) for r in ranked] == [
        ("1", "LatentSurrogate", "2", "2"),
        ("2", "UNet", "3", "1"),
        ("3", "FNO", "1", "3"),
    ]
    assert all(
        r["commit"] == "abcdef1234" and r["samples_seen"] == "400" and r["persistence/darcy2d"] == "1.0" for r in ranked
    )
    apart = {Path(r["run"]).parts[-2:]: (r["status"], r["why"]) for r in rows if r["status"] != "ranked"}
    assert apart == {
        ("11-00-00", "1"): ("failed", "Config error: optim.lr must be a finite number"),
        ("small", "seed1"): ("diverged", "test nRMSE mean is nan"),
        ("gated", "seed0"): ("gated", "beats_persistence: darcy2d 0.9 >= 0.5"),
    }
    table = (out / "leaderboard.md").read_text()
    assert "## burgers1d" in table and "## pdebench2" in table and "## Not ranked" in table
    assert "| – | persistence (trivial) |" in table and "abcdef1234*" in table


def test_the_config_hash_ignores_where_a_run_wrote() -> None:
    a = {"model": {"hidden": 32}, "paths": {"output_dir": "a"}}
    assert config_hash(a) == config_hash({**a, "paths": {"output_dir": "b"}})
    assert config_hash(a) != config_hash({**a, "model": {"hidden": 64}})


def test_four_processes_appending_at_once_lose_no_row(tmp_path: Path) -> None:
    runs = [fake_run(tmp_path / "runs" / f"r{i}", scores(0.1 * (i + 1), 0.1)) for i in range(8)]
    board = tmp_path / "board"
    code = "import sys; from ups.leaderboard.store import append_run\nfor r in sys.argv[2:]: append_run(sys.argv[1], r)"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(board), *map(str, runs[i::4])]) for i in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    lines = (board / "rows.jsonl").read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(ln)["status"] == "ranked" for ln in lines)  # none torn
    table = list(csv.DictReader((board / "leaderboard.csv").open()))
    assert sorted(r["rank"] for r in table) == [str(i) for i in range(1, 9)]
    append_run(board, runs[0])  # a rerun of a run replaces its row
    assert len(read_rows(board)) == 8


def test_find_runs_takes_a_run_directory_itself(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "r", scores(0.1, 0.1))
    assert find_runs([run]) == [run.resolve()]
    assert rows_of([run])[0]["stage"] == "operator"


def test_tables_go_to_wandb_per_group(tmp_path: Path, monkeypatch) -> None:
    logged, calls = [], []

    class Run:
        def log(self, data):
            logged.append(data)

        def finish(self):
            calls.append("finish")

    fake = types.SimpleNamespace(
        init=lambda **kw: calls.append(kw) or Run(), Table=lambda columns, data: ("table", columns, data)
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    rows = rows_of([fake_run(tmp_path / "r", scores(0.1, 0.2))])
    publish_wandb(rows, project="p")
    assert calls == [{"job_type": "leaderboard", "project": "p"}, "finish"]
    kind, cols, data = logged[0]["leaderboard/pdebench2"]
    assert kind == "table" and data[0][cols.index("rollout/darcy2d")] == 0.2 and data[0][cols.index("rank")] == 1


def test_a_finished_run_with_wandb_sends_the_table_to_its_own_wandb_run(tmp_path: Path, monkeypatch) -> None:
    from ups.leaderboard.hook import on_run_finished

    inits, logged = [], []
    run_obj = types.SimpleNamespace(log=logged.append, finish=lambda: None)
    fake = types.SimpleNamespace(init=lambda **kw: inits.append(kw) or run_obj, Table=lambda columns, data: data)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = fake_run(tmp_path / "r", scores(0.1, 0.2))
    (run / "wandb_id.txt").write_text("abc123")
    cfg = OmegaConf.create(
        {
            "leaderboard": {"path": str(tmp_path / "board")},
            "logger": {"wandb": {"project": "ups", "entity": None, "mode": "offline"}},
        }
    )
    assert on_run_finished(cfg, run) == tmp_path / "board" / "leaderboard.md"
    assert inits == [
        {
            "job_type": "leaderboard",
            "id": "abc123",
            "resume": "allow",
            "dir": str(run),
            "project": "ups",
            "mode": "offline",
        }
    ]
    assert list(logged[0]) == ["leaderboard/pdebench2"]
    assert on_run_finished(OmegaConf.create({"leaderboard": {"path": None}}), run) is None
