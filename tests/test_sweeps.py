"""Sweeps: a multirun ends in a report (CSV, markdown, plots) that keeps failed jobs with their
error, a fixed global batch derives the accumulation per job, and ``python -m ups.report``
rewrites the report of any sweep directory."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_cfg
from ups.config import ConfigError, validate
from ups.sweeps.report import collect


def test_global_batch_sets_the_accumulation_or_names_the_batches_that_fit() -> None:
    cfg = compose_cfg(["trainer.global_batch=32", "trainer.batch_size=8", "parallelism=ddp2"])
    validate(cfg)
    assert cfg.trainer.accum_steps == 2
    cfg = compose_cfg(["trainer.global_batch=32", "trainer.batch_size=8"])
    validate(cfg)
    assert cfg.trainer.accum_steps == 4
    with pytest.raises(ConfigError, match=r"global_batch=24 is not a multiple of .* 16 x 2 = 32.*: 1, 2, 3, 4, 6, 12"):
        validate(compose_cfg(["trainer.global_batch=24", "trainer.batch_size=16", "parallelism=ddp2"]))


def _sweep(tmp_path: Path, data_dir: Path, *overrides: str, timeout: int = 420) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "-m",
        "ups.train",
        "-m",
        "model=tiny",
        "hardware=cpu",
        "hardware.threads=1",
        "task=advection1d",
        "data.generate=true",
        f"paths.data_dir={data_dir}",
        "trainer.max_steps=4",
        "trainer.log_every=2",
        "data.eval_samples=2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *overrides,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def test_a_sweep_reports_every_job_and_keeps_the_failed_ones(tmp_path: Path, data_dir: Path) -> None:
    proc = _sweep(tmp_path, data_dir, "trainer.global_batch=16", "trainer.batch_size=4,8", "optim.lr=1e-3,inf")
    assert proc.returncode == 1, proc.stderr[-3000:]  # two jobs failed on purpose: the sweep says so
    sweep = tmp_path / "sweep"
    rows = list(csv.DictReader((sweep / "sweep_report.csv").open()))
    assert len(rows) == 4
    done = [r for r in rows if r["status"] == "completed"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(done) == 2 and len(failed) == 2
    assert all("optim.lr must be a finite number" in r["error"] for r in failed)
    assert {(r["batch_size"], r["accum_steps"], r["global_batch"]) for r in done} == {
        ("4", "4", "16"),
        ("8", "2", "16"),
    }
    assert all(float(r["samples_per_s"]) > 0 and float(r["test/nrmse/advection1d"]) > 0 for r in done)
    table = (sweep / "sweep_report.md").read_text()
    assert "## Jobs that did not complete" in table and "optim.lr=inf" in table
    assert "2 of 4 jobs completed" in proc.stdout
    pytest.importorskip("matplotlib")
    for png in ("sweep_throughput.png", "sweep_val_nrmse.png", "sweep_memory.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_the_report_command_covers_an_unfinished_job(tmp_path: Path) -> None:
    job = tmp_path / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(["trainer.batch_size=64"]))
    (job / "train.log").write_text("step 10\nkilled by the scheduler\n")
    (job / "metrics.jsonl").write_text(
        json.dumps(
            {
                "kind": "train",
                "step": 10,
                "samples_per_s": 100.0,
                "world_size": 1,
                "batch_size": 64,
                "accum_steps": 1,
                "global_batch": 64,
                "peak_memory_mb": 10.0,
            }
        )
        + "\n{cut"
    )
    from ups.report import main

    assert main([str(tmp_path / "sweep")]) == 0
    (row,) = collect(tmp_path / "sweep")
    assert row["status"] == "unfinished" and row["error"] == "killed by the scheduler"
    assert row["samples_per_s"] == 100.0 and row["steps"] == 10
    assert main([str(tmp_path / "nothing")]) == 1


@pytest.mark.slow
def test_a_local_sweep_of_single_and_two_rank_jobs(tmp_path: Path, data_dir: Path) -> None:
    proc = _sweep(
        tmp_path,
        data_dir,
        "trainer.batch_size=4,8",
        "trainer.accum_steps=1,2",
        "parallelism=single,ddp2",
        "parallelism.timeout_s=60",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep_report.csv").open()))
    assert len(rows) == 8 and {r["world_size"] for r in rows} == {"1", "2"}
    assert all(r["status"] == "completed" for r in rows)
    pytest.importorskip("matplotlib")
    assert (tmp_path / "sweep" / "sweep_scaling.png").exists()


def test_the_sweep_notebook_runs_headless_on_a_sweeps_output(
    tmp_path: Path, data_dir: Path, monkeypatch, capsys
) -> None:
    pytest.importorskip("matplotlib")
    proc = _sweep(tmp_path, data_dir, "trainer.batch_size=4,8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "sweep_analysis.ipynb").read_text())
    monkeypatch.setenv("UPS_SWEEP_DIR", str(tmp_path / "sweep"))
    namespace: dict = {}
    for cell in (c for c in nb["cells"] if c["cell_type"] == "code"):
        assert cell["outputs"] == [] and cell["execution_count"] is None
        exec(compile("".join(cell["source"]), "sweep_analysis.ipynb", "exec"), namespace)
    out = capsys.readouterr().out
    assert "2 of 2 jobs completed" in out and "advection1d: job" in out
    assert (tmp_path / "sweep" / "sweep_throughput.png").exists()
