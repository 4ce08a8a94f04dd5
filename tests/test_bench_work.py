"""The bench's work figures: FLOPs per variant over the batches actually run, ops per step, and the
check that no figure is reported twice (issue 22). Counts only, never timings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_cfg
from ups.bench.harness import measure
from ups.bench.ops import count_ops, summary
from ups.bench.report import variants_markdown
from ups.bench.run import same_measurements
from ups.bench.variants import variant_overrides

# Ops per training step of model=tiny, pdebench2, batch 4, eager fp32 (forward, backward, AdamW), the
# two steps of this test (both advection1d): 556 on 2026-12-04 while ups/models/ was being rebuilt,
# 415 after the rebuild, 336 with one-product self-attention and no weighting ops for a one-task batch
# (docs/benchmarks.md). The ceiling (+25%) catches a change that adds launches by the dozen; lower it
# as the count falls. Issue 22's third is asked of the step as it runs: tests/test_bench_launches.py.
TINY_OPS_CEILING = 430


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench_work_data")


def _cfg_overrides(data_dir: Path) -> list[str]:
    return [
        "hardware=cpu",
        "model=tiny",
        "task=pdebench2",
        f"paths.data_dir={data_dir}",
        "data.generate=true",
        "trainer.batch_size=4",
    ]


def _cfg(data_dir: Path, *overrides: str):
    return compose_cfg([*_cfg_overrides(data_dir), "data.num_workers=0", *overrides])


def test_each_variant_counts_its_own_flops_over_the_batches_it_ran(data_dir: Path) -> None:
    # The old harness took one batch's FLOPs (one task's) from the baseline and gave them to every
    # variant; a latent cache, which skips the encoder, then showed a higher MFU for less work.
    stage = "operator"
    frozen = measure(
        compose_cfg([*_cfg_overrides(data_dir), *variant_overrides("frozen_encoder", stage)]),
        torch.device("cpu"),
        warmup=0,
        steps=4,
        work=True,
    )
    cached = measure(
        compose_cfg([*_cfg_overrides(data_dir), *variant_overrides("latent_cache", stage)]),
        torch.device("cpu"),
        warmup=0,
        steps=4,
        work=True,
    )
    assert cached["latent_cache_used"] and not frozen["latent_cache_used"]
    # same seed, same sampler: the same task mix in both real passes
    assert {t: v["steps"] for t, v in cached["work"]["per_task"].items()} == {
        t: v["steps"] for t, v in frozen["work"]["per_task"].items()
    }
    assert cached["work"]["flops_per_sample"] < frozen["work"]["flops_per_sample"]
    assert cached["work"]["ops_per_step"] < frozen["work"]["ops_per_step"]
    # tasks differ in cost: the weighted figure is not any single task's unless only one ran
    per_task = frozen["work"]["per_task"]
    if len(per_task) > 1:
        rates = {t: v["flops"] / v["samples"] for t, v in per_task.items()}
        assert min(rates.values()) < frozen["work"]["flops_per_sample"] < max(rates.values())


def test_ops_per_training_step_of_model_tiny(data_dir: Path) -> None:
    out = measure(_cfg(data_dir), torch.device("cpu"), warmup=1, steps=2, work=True)
    w = out["work"]
    print(
        f"\n{dt.date.today()} model=tiny ops/step {w['ops_per_step']:.0f} (views {w['views_per_step']:.0f}); "
        + ", ".join(f"{t}: {v['ops'] / v['steps']:.0f}" for t, v in w["per_task"].items())
    )
    assert 0 < w["ops_per_step"] <= TINY_OPS_CEILING, w
    names = dict(w["top_ops"])
    assert any("mm" in k or "linear" in k for k in names), names  # the forward's and backward's products


def test_the_op_count_is_deterministic_and_sees_backward_and_optimizer() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), foreach=True)

    def step() -> None:
        model(torch.randn(5, 8)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # the optimizer's state is created in the first step
    a, b = summary(count_ops(step)), summary(count_ops(step))
    assert a == b
    ops = dict(a["top"])
    assert a["launches"] > 10 and a["views"] > 0
    assert "addmm" in ops and "mm" in ops  # forward and backward
    counter = count_ops(step)
    assert any(k.startswith("_foreach") for k in counter.launches)  # the optimizer
    assert "t" in counter.views and "t" not in counter.launches  # views launch nothing


def test_one_measurement_reported_twice_is_flagged() -> None:
    rows = [
        {"variant": "baseline", "status": "ok", "real_s": 0.8588, "real_samples": 1280},
        {"variant": "compile", "status": "ok", "real_s": 0.8588, "real_samples": 1280},
        {"variant": "bf16", "status": "ok", "real_s": 0.8588000001, "real_samples": 1280},
        {"variant": "sdpa_flash", "status": "failed", "error": "x"},
    ]
    assert same_measurements(rows) == [("baseline", "compile")]


def test_the_report_shows_each_variants_work_and_warns_of_a_duplicate() -> None:
    work = {
        "steps": 2,
        "samples": 8,
        "analytic": 8e9,
        "counted": 7e9,
        "flops_per_sample": 1e9,
        "ops_per_step": 900.0,
        "views_per_step": 300.0,
        "top_ops": [("mm", 100.0)],
        "per_task": {
            "advection1d": {"steps": 1, "samples": 4, "flops": 2e9, "ops": 800},
            "darcy2d": {"steps": 1, "samples": 4, "flops": 6e9, "ops": 1000},
        },
    }
    row = {
        "status": "ok",
        "samples_per_s": 10.0,
        "tokens_per_s": 10.0,
        "step_ms": 400.0,
        "data_ms": 1.0,
        "forward_ms": 1.0,
        "backward_ms": 1.0,
        "optimizer_ms": 1.0,
        "loader_samples_per_s": 100.0,
        "model_samples_per_s": 10.0,
        "peak_memory_mb": 1.0,
        "val_loss": 0.5,
        "work": work,
        "what": "w",
        "startup": {
            k: 0.0
            for k in (
                "data_open_s",
                "model_build_s",
                "parallelize_s",
                "train_set_s",
                "first_batch_s",
                "first_step_s",
                "compile_s",
            )
        },
        "compile": {"message": "torch.compile failed on 2 of 4 frames, which run eagerly"},
    }
    info = {
        "date": "2026-12-04",
        "device": "cpu",
        "cpu": "c",
        "threads": 1,
        "cpu_count": 2,
        "torch": "t",
        "loadavg_before": 0.1,
        "command": "python -m ups.bench",
        "model": "m",
        "task": "t",
        "batch_size": 4,
        "config_s": 1.0,
    }
    text = variants_markdown(
        {
            "info": info,
            "peaks": {"measured_fp32": 1e10, "datasheet_bf16": None, "device_name": "CPU"},
            "flops": work,
            "rows": [{**row, "variant": "compile"}, {**row, "variant": "all"}],
            "same_measurement": [("compile", "all")],
        }
    )
    assert "| 1 | 900 |" in text  # GFLOP/sample and ops/step columns
    assert "`compile` and `all` report the same real-pass time" in text
    assert "failed on 2 of 4 frames" in text and "darcy2d 1 steps, 1.5 GFLOP/sample, 1,000 ops/step" in text


def test_the_profile_summary_tables_kernels_and_a_failed_variant() -> None:
    from ups.bench.profile import markdown

    info = {
        "date": "2026-12-04",
        "device": "cuda:0",
        "gpu": "H200",
        "torch": "t",
        "command": "python -m ups.bench.profile",
    }
    rows = {
        "baseline": {
            "steps": 5,
            "wall_ms_per_step": 43.0,
            "ops_per_step": 1656.0,
            "kernels_per_step": 2100.0,
            "mean_kernel_us": 12.5,
            "gpu_busy_share": 0.61,
            "syncs_per_step": 1.0,
            "top_ops_table": "T",
        },
        "all": {"error": "RuntimeError: x"},
    }
    text = markdown(info, rows)
    assert "| baseline | 43.0 | 1,656 | 2,100 | 12.5 | 61% | 1.0 |" in text
    assert "| all | failed: RuntimeError: x |" in text and "H200" in text
