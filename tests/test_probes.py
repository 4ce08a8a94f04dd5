"""Defects a new user's probes found (issue 21, item 5), one test each."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import compose_cfg
from ups.config import ConfigError
from ups.objectives import check_frozen_start

FROZEN_FIRST = {
    "operator_frozen_encoder": "operator",
    "operator_on_autoencoder": "operator",
    "finetune_frozen_encoder": "finetune",
}


@pytest.mark.parametrize("option", sorted(FROZEN_FIRST))
def test_training_a_first_stage_on_a_frozen_random_encoder_is_refused(option: str) -> None:
    stage = FROZEN_FIRST[option]
    cfg = compose_cfg([f"stage={option}", "paths.data_dir=d", "paths.output_dir=o"])
    with pytest.raises(ConfigError, match=rf"stages.{stage} freezes the encoder but nothing trained it.*init_from"):
        check_frozen_start(cfg.stages)
    cfg = compose_cfg([f"stage={option}", "paths.data_dir=d", "paths.output_dir=o", f"stages.{stage}.init_from=c"])
    check_frozen_start(cfg.stages)
    for ok in ("stage=pretrain_finetune", "stage=autoencoder_pretrain"):
        check_frozen_start(compose_cfg([ok, "paths.data_dir=d", "paths.output_dir=o"]).stages)
    skipped = compose_cfg(
        ["stage=pretrain_finetune", "stages.operator.steps=0", "paths.data_dir=d", "paths.output_dir=o"]
    )
    with pytest.raises(ConfigError, match="stages.finetune freezes the encoder"):  # the stage that trained it skipped
        check_frozen_start(skipped.stages)


def test_stale_temporary_files_of_killed_generations_are_removed(tmp_path: Path) -> None:
    from ups.data.synth import generate
    from ups.data.synth._common import STALE_AFTER_S

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = "1D_Advection_Sols_beta0.4.hdf5"  # the default small file
    old = time.time() - STALE_AFTER_S - 5
    litter = {
        "dead_old": tmp_path / f"{name}.{dead.pid}-0badc0de.tmp",
        "dead_fresh": tmp_path / f"{name}.{dead.pid}-0fresh00.tmp",
        "alive_old": tmp_path / f"{name}.{os.getpid()}-a11ve000.tmp",
    }
    for key, path in litter.items():
        path.write_bytes(b"partial")
        if key.endswith("old"):
            os.utime(path, (old, old))
    generate("advection1d", tmp_path, n_samples=2, nx=16, nt=6)
    left = {p.name for p in tmp_path.iterdir()}
    assert litter["dead_old"].name not in left  # a kill -9's litter
    assert {litter["dead_fresh"].name, litter["alive_old"].name} <= left  # may still be written to
    assert name in left


def test_a_data_directory_the_user_names_gets_no_cache_files(tmp_path: Path, monkeypatch) -> None:
    import shutil

    from ups.data.tasks import build_task

    cfg = compose_cfg(["task=advection1d", f"paths.data_dir={tmp_path / 'named'}", "paths.output_dir=o"])
    ds = cfg.task.datasets.advection1d
    ds.synth.n_samples = 10
    named, cache, run_dir = tmp_path / "named", tmp_path / "cache", tmp_path / "run"
    monkeypatch.setenv("UPS_CACHE_DIR", str(cache))
    cfg.data.generate = True  # asked for: UPS writes the files, and its caches beside them
    first = build_task("advection1d", ds, cfg.data, named, [named, run_dir])
    assert (named / ".ups_stats").is_dir()
    shutil.rmtree(named / ".ups_stats")
    cfg.data.generate = None  # a named directory without data.generate=true is only read
    before = sorted(p.name for p in named.iterdir())
    again = build_task("advection1d", ds, cfg.data, named, [named, run_dir])
    assert sorted(p.name for p in named.iterdir()) == before
    assert len(list((cache / ".ups_stats").iterdir())) == 2  # the statistics and the scan, keyed by the data
    assert again.stats == first.stats and not run_dir.exists()


def test_evaluate_without_a_run_or_with_a_wrong_one_is_one_paragraph_and_creates_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for args, needle in (([], "run= is required"), ([f"run={tmp_path / 'typo' / 'run'}"], "no config.yaml")):
        proc = subprocess.run(
            [sys.executable, "-m", "ups.evaluate", *args], cwd=work, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 1 and needle in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"] and not list(work.iterdir())


def test_the_benchmark_writes_into_its_run_directory_unless_asked_for_the_docs(tmp_path: Path, monkeypatch) -> None:
    from ups.bench import report
    from ups.bench import run as bench_run

    cfg = compose_cfg(["paths.data_dir=d", f"paths.output_dir={tmp_path}", "hardware=cpu"])
    assert cfg.bench.docs is None and cfg.bench.plot_dir is None
    monkeypatch.setattr(bench_run, "run_variants", lambda cfg, device, partial: {"info": {}, "rows": []})
    monkeypatch.setattr(report, "variants_markdown", lambda result: "| the table |")
    monkeypatch.setattr(report, "replace_section", lambda *a: pytest.fail("docs/benchmarks.md was rewritten"))
    bench_run.bench(cfg)
    assert (tmp_path / "bench.md").read_text() == "| the table |" and (tmp_path / "bench.json").exists()


def test_a_later_run_in_the_same_process_times_its_start_up_from_its_own_start() -> None:
    from ups.training.startup import Startup, process_age_s

    Startup()  # the process's first run (or an earlier one in this test session)
    later = Startup()
    assert later.parts["config"] == 0.0 < process_age_s()  # not the process age, which includes the jobs before


def test_steps_redone_after_a_restart_count_once_in_the_sweep_report(tmp_path: Path) -> None:
    import json

    from ups.sweeps.report import job_row

    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("[]\n")

    def rec(step, sps):
        return {
            "kind": "train",
            "step": step,
            "stage": "operator",
            "samples_per_s": sps,
            "global_batch": 8,
            "batch_size": 8,
            "accum_steps": 1,
            "world_size": 1,
        }

    # steps 10, 20, 30; a restart from the checkpoint at 10 redoes 20 and 30 (slowly the first time)
    lines = [rec(10, 100.0), rec(20, 1.0), rec(30, 1.0), rec(20, 100.0), rec(30, 100.0)]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    row = job_row(job)
    assert row["samples_per_s"] == 100.0 and row["steps"] == 30  # the mean over steps 20 and 30, each once


def test_max_restarts_of_a_single_process_is_not_silently_ignored(monkeypatch, caplog) -> None:
    import logging

    import ups.runner
    from ups.launch import _launch

    monkeypatch.setattr(ups.runner, "run", lambda cfg, env: {"ran": True})
    cfg = compose_cfg(["paths.data_dir=d", "paths.output_dir=o", "parallelism.max_restarts=2"])
    with caplog.at_level(logging.WARNING, logger="ups.launch"):
        assert _launch(cfg) == {"ran": True}
    assert "parallelism.max_restarts=2 is not used by a single process" in caplog.text


def test_help_names_the_command_and_lists_only_what_it_takes(tmp_path: Path) -> None:
    def helptext(module: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    train, bench, evaluate = helptext("ups.train"), helptext("ups.bench"), helptext("ups.evaluate")
    assert train.startswith("ups.train is powered by Hydra") and "schema/model" not in train
    assert "\ngates: default, none\n" in train and "\nhydra/launcher: slurm\n" in train
    assert bench.startswith("ups.bench is powered by Hydra") and "__main__" not in bench
    assert evaluate.startswith("python -m ups.evaluate run=") and "model:" not in evaluate and "run: ???" in evaluate
