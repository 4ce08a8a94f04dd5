"""The benchmark harness runs and its numbers are self-consistent (never its timings: machines are shared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_cfg
from ups.bench.harness import measure
from ups.bench.report import replace_section


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bench's own data: its default-size files must not stand in for the 16-sample files that
    other tests generate into the session's shared data directory."""
    return tmp_path_factory.mktemp("bench_data")


def test_the_step_split_adds_up_and_the_flop_formulas_match_the_counter(data_dir: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(
        [
            "hardware=cpu",
            "model=tiny",
            "task=pdebench2",
            f"paths.data_dir={data_dir}",
            "data.generate=true",
            "trainer.batch_size=4",
        ]
    )
    out = measure(cfg, torch.device("cpu"), warmup=1, steps=3, work=True)
    # the parts are timed back to back, so they make up the split pass's step (within the loop's own cost)
    assert abs(out["parts_sum_ms"] - out["split_step_ms"]) <= 0.1 * out["split_step_ms"], out
    assert min(out[k] for k in ("data_ms", "forward_ms", "backward_ms", "optimizer_ms")) >= 0
    assert out["batch_samples"] == 4 and out["samples_per_s"] > 0 and out["model_samples_per_s"] > 0
    # tiny on pdebench2: advection1d 64 points / patch 4 = 16 tokens, darcy2d 32^2 / 4^2 = 64
    assert out["tokens_per_s"] == pytest.approx(out["samples_per_s"] * (16 + 64) / 2)
    f = out["work"]
    # forward + backward = 3x the forward's matmuls; the counter sees what actually ran (no input
    # gradient for the first layers), so the formulas may exceed it a little, never by much
    assert 0.9 <= f["analytic"] / f["counted"] <= 1.3, f
    # the work is the real pass's: its steps and samples, each task's share weighted by its batches
    assert f["steps"] == 3 and f["samples"] == out["real_samples"] == 12
    assert sum(t["steps"] for t in f["per_task"].values()) == 3
    assert abs(sum(t["flops"] for t in f["per_task"].values()) - f["analytic"]) <= 1e-6 * f["analytic"]
    assert f["flops_per_sample"] == f["analytic"] / 12 and f["ops_per_step"] > 0
    assert out["val_loss"] is not None and out["peak_memory_mb"] > 0
    assert set(out["startup"]) >= {"data_open_s", "model_build_s", "parallelize_s", "first_batch_s", "first_step_s"}


def _bench(tmp_path: Path, data_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "-m",
        "ups.bench",
        "hardware=cpu",
        "hardware.threads=1",
        "model=tiny",
        f"paths.data_dir={data_dir}",
        "data.generate=true",
        "trainer.batch_size=4",
        "bench.warmup_steps=1",
        "bench.steps=2",
        f"bench.docs={tmp_path / 'benchmarks.md'}",
        f"bench.plot_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *overrides,
    ]
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_the_app_prints_ratios_and_keeps_a_failed_variant(tmp_path: Path, data_dir: Path) -> None:
    # the memory-efficient attention kernel has no CPU implementation: a row with its error, not a crash
    proc = _bench(tmp_path, data_dir, "bench.variants=[baseline,fused_adamw,sdpa_efficient]")
    assert "| baseline |" in proc.stdout and "| fused_adamw |" in proc.stdout and "× baseline" in proc.stdout
    result = json.loads((tmp_path / "run" / "bench.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["baseline", "fused_adamw", "sdpa_efficient", "baseline (again)"]
    assert rows["sdpa_efficient"]["status"] in ("ok", "failed")
    # ratios are against the mean of the baseline's first and last runs
    assert abs(rows["baseline"]["ratio"] + rows["baseline (again)"]["ratio"] - 2) < 1e-9
    assert "baseline_drift" in result and "differ by" in proc.stdout
    doc = (tmp_path / "benchmarks.md").read_text()
    assert "<!-- bench:cpu -->" in doc and "Command: `python -m ups.bench" in doc
    assert result["info"]["torch"] == torch.__version__ and result["info"]["date"]


def test_a_scaling_axis_is_tabled_and_plotted(tmp_path: Path, data_dir: Path) -> None:
    _bench(tmp_path, data_dir, "bench.axis=batch", "bench.points=[2,4]")
    result = json.loads((tmp_path / "run" / "bench_batch.json").read_text())
    assert [r["value"] for r in result["rows"]] == ["2", "4"] and all(r["status"] == "ok" for r in result["rows"])
    assert (tmp_path / "bench_batch.png").stat().st_size > 5000
    assert "bench_batch:cpu" in (tmp_path / "benchmarks.md").read_text()


def test_a_docs_section_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    doc = tmp_path / "b.md"
    doc.write_text("# B\n\nhand-written\n")
    replace_section(doc, "bench:cpu", "one")
    replace_section(doc, "bench:gpu", "two")
    replace_section(doc, "bench:cpu", "three")
    text = doc.read_text()
    assert "hand-written" in text and "three" in text and "one" not in text and "two" in text


def test_cpu_threads_leave_the_busy_cores_alone() -> None:
    from ups.training.compute import cpu_threads

    assert cpu_threads(2, 0.1, 1) == 2  # a quiet machine: every core
    assert cpu_threads(2, 1.4, 1) == 1  # one core busy with other work
    assert cpu_threads(2, 5.0, 1) == 1  # never below one
    assert cpu_threads(16, 0.0, 4) == 4  # shared among the node's ranks
