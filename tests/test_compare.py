"""launch/compare.py and its schedule: seeds end in one mean ± spread table beside the trivial predictors,
and optim.schedule=cosine_time reaches its floor when the wall-clock budget is spent, also across a resume."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_cfg, crash_run
from ups.config import ConfigError, validate
from ups.training.optim import TimeCosineLR, advance, build_scheduler, time_lr_factor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))
from _runs import Job, mean_std, run_jobs  # noqa: E402


def _train_lrs(run_dir: Path) -> list[tuple[int, float]]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["lr"]) for r in recs if r.get("kind") == "train"]


def _near_floor(lr: float, base: float = 1e-3) -> bool:
    """The last step's lr under a 5 s budget and the floor 0.05 x lr: the stop comes at the first step (or
    after the first evaluation) past the budget, so the last step is within ~0.5 s of its end, where the
    cosine is below 0.15 x lr; exactly at the end it is the floor (the unit test above)."""
    return 0.05 * base * 0.999 <= lr <= 0.15 * base


def test_time_schedule_warms_up_then_reaches_its_floor_at_the_budget() -> None:
    assert time_lr_factor(0, 10, 0.0, 8.0, 0.05) == pytest.approx(0.1)
    assert time_lr_factor(50, 10, 0.0, 8.0, 0.05) == pytest.approx(1.0)
    assert time_lr_factor(50, 10, 4.0, 8.0, 0.05) == pytest.approx(0.525)
    assert time_lr_factor(50, 10, 8.0, 8.0, 0.05) == pytest.approx(0.05)
    assert time_lr_factor(50, 10, 9.0, 8.0, 0.05) == pytest.approx(0.05)  # past the budget: stays at the floor
    assert time_lr_factor(3, 100, 8.0, 8.0, 0.05) == pytest.approx(0.04)  # in warm-up at the end: below the floor
    assert time_lr_factor(10, 100, 8.0, 8.0, 0.05) == pytest.approx(0.05)  # a warm-up cut short still ends there


def test_time_schedule_state_resumes_under_the_current_budget() -> None:
    cfg = compose_cfg(
        [
            "paths.data_dir=d",
            "paths.output_dir=o",
            "optim.schedule=cosine_time",
            "trainer.time_budget_s=10",
            "optim.warmup_steps=2",
        ]
    )
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    sched = build_scheduler(opt, cfg.optim, 100, cfg.trainer.time_budget_s)
    assert isinstance(sched, TimeCosineLR)
    for i in range(5):
        opt.step()
        advance(sched, 1.0 * (i + 1))
    saved = sched.state_dict()
    assert saved["elapsed_s"] == 5.0 and saved["last_epoch"] == 5
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    again = TimeCosineLR(opt2, 2, 20.0, 0.05)  # a rerun that raised the budget to 20 s
    again.load_state_dict(saved)
    assert again.budget_s == 20.0 and again.elapsed_s == 5.0 and again.last_epoch == 5
    advance(again, 20.0)
    assert again.get_last_lr()[0] == pytest.approx(0.05e-3)
    # the step-based schedules are unchanged
    step = build_scheduler(opt, compose_cfg(["paths.data_dir=d", "paths.output_dir=o"]).optim, 100)
    assert isinstance(step, torch.optim.lr_scheduler.LambdaLR)


def test_time_schedule_without_a_budget_is_refused_at_compose_time() -> None:
    cfg = compose_cfg(["paths.data_dir=d", "paths.output_dir=o", "optim.schedule=cosine_time"])
    with pytest.raises(ConfigError, match="trainer.time_budget_s"):
        validate(cfg)
    validate(
        compose_cfg(["paths.data_dir=d", "paths.output_dir=o", "optim.schedule=cosine_time", "trainer.time_budget_s=5"])
    )


def test_the_step_reduction_carries_one_clock() -> None:
    from ups.training.step_totals import StepTotals

    totals = StepTotals(["a"], torch.device("cpu"), 1)
    totals.add(torch.tensor(0.5), {"a": (torch.tensor(0.5, dtype=torch.float64), 4)}, 1)
    agreed = totals.reduce(torch.tensor(2.0), False, 3.25)
    assert agreed.elapsed_s == 3.25 and agreed.loss == 0.5 and agreed.grad_norm == 2.0
    assert agreed.task_losses == {"a": 0.5} and not agreed.stop


def test_run_jobs_runs_two_at_once_and_names_a_failure(tmp_path: Path) -> None:
    def sleeper(name: str, code: int) -> Job:
        return Job(name, tmp_path / name, [sys.executable, "-c", f"import time,sys; time.sleep(1.5); sys.exit({code})"])

    t0 = time.perf_counter()
    run_jobs([sleeper("a", 0), sleeper("b", 0)], parallel=2)
    assert time.perf_counter() - t0 < 2.9  # together, not one after the other
    assert (tmp_path / "a" / "launch.log").exists()
    with pytest.raises(RuntimeError, match="bad"):
        run_jobs([sleeper("bad", 3)], parallel=2)
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2))) and mean_std([2.0]) == (2.0, 0.0)


def test_time_schedule_resumes_from_the_saved_elapsed_time(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    cfg = tiny_cfg(
        "task=advection1d",
        "trainer.steps_per_epoch=4",
        "optim.warmup_steps=2",
        "trainer.max_steps=100000",
        "optim.schedule=cosine_time",
        "trainer.time_budget_s=5",
    )
    crash_run(cfg, lambda trainer: trainer.step == 10, monkeypatch)
    before = dict(_train_lrs(Path(cfg.paths.output_dir)))
    from ups.runner import run

    run(cfg)  # continues from the step-8 checkpoint
    lrs = _train_lrs(Path(cfg.paths.output_dir))
    resumed = lrs[len(before) :]
    assert resumed[0][0] == 9  # from the checkpoint of step 8
    # the curve goes on from the saved elapsed time (a fresh clock would put step 9 near the full lr)
    assert before[8] > resumed[0][1] > 0.5 * before[8]
    resumed = [lr for _, lr in resumed]
    assert _near_floor(resumed[-1])  # and ends at the floor when the budget is spent


def test_compare_seeds_make_a_mean_and_spread_table(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    cmd = [
        sys.executable,
        str(ROOT / "launch" / "compare.py"),
        "--task",
        "advection1d",
        "--budget-s",
        "5",
        "--models",
        "tiny",
        "--seeds",
        "0",
        "1",
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        "--hardware",
        "cpu",
        "--set",
        "tiny=optim.warmup_steps=5",
        "--lr",
        "tiny=1e-3",
        "--",
        "data.eval_samples=2",
        "task.datasets.advection1d.synth.n_samples=16",
        "trainer.log_every=1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "comparison.md").read_text()
    assert "| task | tiny | persistence | training-mean field |" in table
    assert " --set tiny=optim.warmup_steps=5 -- " in table  # the command names the option's own override
    assert "mean ± sample standard deviation over 2 seed(s)" in table
    assert re.search(r"Runs finished \d{4}-\d\d-\d\d \d\d:\d\d:\d\d to \d\d:\d\d:\d\d", table)  # the hour
    assert "Learning rate fixed with --lr (tiny=1e-3): chosen before this command" in table
    row = next(line for line in table.splitlines() if line.startswith("| advection1d |"))
    mean, spread = (float(x) for x in row.split("|")[2].split("±"))
    assert mean > 0 and spread >= 0
    assert "- tiny: ahead of both trivial predictors on" in table
    for seed in (0, 1):
        run_dir = out / "tiny" / f"seed{seed}"
        config = (run_dir / "config.yaml").read_text()
        assert f"seed: {seed}" in config and "schedule: cosine_time" in config and "warmup_steps: 5" in config
        lrs = [lr for _, lr in _train_lrs(run_dir)]
        assert _near_floor(lrs[-1]) and max(lrs) > 0.5e-3


@pytest.mark.slow
def test_compare_lr_grid_picks_on_validation_and_counts_wins(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    cmd = [
        sys.executable,
        str(ROOT / "launch" / "compare.py"),
        "--task",
        "darcy2d",
        "--budget-s",
        "3",
        "--models",
        "tiny",
        "fno",
        "--seeds",
        "0",
        "1",
        "--lr-grid",
        "1e-3",
        "3e-3",
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        "--hardware",
        "cpu",
        "--",
        "data.eval_samples=2",
        "task.datasets.darcy2d.synth.n_samples=16",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "comparison.md").read_text()
    assert "| task | tiny | fno | persistence | training-mean field |" in table
    row = next(line for line in table.splitlines() if line.startswith("| darcy2d |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "±" in cells[1] and "±" in cells[2] and cells[3] == "–" and float(cells[4]) > 0
    assert "- tiny: ahead of fno on" in table and "- fno: ahead of both trivial predictors on" in table
    summary = json.loads((out / "comparison.json").read_text())
    for model in ("tiny", "fno"):
        grid = summary["lr_grid"][model]
        assert grid["chosen"] == min((float(k) for k in grid["val"]), key=lambda lr: grid["val"][f"{lr:g}"])
        assert (
            f"optim.lr: {grid['chosen']:g}" in (out / model / "seed1" / "config.yaml").read_text()
            or f"lr: {grid['chosen']}" in (out / model / "seed1" / "config.yaml").read_text()
        )
    assert "validation mean rollout nRMSE" in table and "The test split played no part" in table


def test_fixed_per_model_rates_parse_and_refuse_unknown_options() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))
    from compare import fixed_lrs, option_sets

    assert option_sets(["small=a.b=1", "small=+c=2"], ["small", "fno"]) == {"small": ["a.b=1", "+c=2"], "fno": []}
    with pytest.raises(SystemExit, match="--set unet=x=1: expected OPTION=OVERRIDE"):
        option_sets(["unet=x=1"], ["small", "fno"])

    assert fixed_lrs(["small=1e-3", "fno=0.003"], ["small", "fno"]) == {"small": 1e-3, "fno": 3e-3}
    with pytest.raises(SystemExit, match="'unet' is not one of the compared options"):
        fixed_lrs(["unet=1e-3"], ["small", "fno"])
    with pytest.raises(SystemExit, match="'fast' is not a number"):
        fixed_lrs(["fno=fast"], ["small", "fno"])


def test_adamw_uses_the_fused_kernel_on_cpu_unless_told_not_to() -> None:
    """Fused AdamW halves the optimizer step on CPU (docs/benchmarks.md); `optim.fused=false` keeps foreach."""
    from types import SimpleNamespace

    from ups.training.optim import build_optimizer

    model = torch.nn.Linear(4, 4)
    cfg = SimpleNamespace(weight_decay=0.01, lr=1e-3, betas=(0.9, 0.95), fused=None)
    default = build_optimizer(model, cfg, None, torch.device("cpu"))
    assert default.defaults["fused"] is True
    cfg.fused = False
    off = build_optimizer(model, cfg, None, torch.device("cpu"))
    assert not off.defaults["fused"] and off.defaults["foreach"] is True
