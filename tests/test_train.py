"""End-to-end runs through run(cfg): loss falls, outputs are written, resume continues."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import crash_run
from ups.runner import run
from ups.training.checkpoint import MARKER, load_consolidated


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_learns_and_writes_outputs(tiny_cfg) -> None:
    cfg = tiny_cfg("trainer.max_steps=60", "trainer.steps_per_epoch=15", "optim.warmup_steps=5")
    result = run(cfg)
    run_dir = Path(result["run_dir"])
    recs = records(run_dir)
    train = [r for r in recs if r["kind"] == "train"]
    evals = [r for r in recs if r["kind"] == "eval"]
    assert all({"step", "kind"} <= r.keys() for r in recs)
    assert all({"loss", "samples_per_s", "epoch", "global_batch"} <= r.keys() for r in train)
    # One task per step (sampler mode "task"), so each task's loss shows on the steps that drew it.
    assert all(any(f"loss/{t}" in r for r in train) for t in ("advection1d", "darcy2d"))
    assert all({"nrmse/advection1d", "nrmse/darcy2d", "nrmse/mean"} <= r.keys() for r in evals)
    assert [r["step"] for r in train] == list(range(1, 61))
    assert len(result["epoch_losses"]) == 4
    assert result["epoch_losses"][-1] < 0.7 * result["epoch_losses"][0]
    for key in ("val/nrmse/advection1d", "test/nrmse/darcy2d"):
        assert 0.0 < result[key] < 10.0
    assert (run_dir / "config.yaml").exists()
    for name in ("final", "best"):
        assert (run_dir / "checkpoints" / "operator" / name / MARKER).exists()
    assert len(list((run_dir / "checkpoints" / "operator").glob("step_*"))) == cfg.trainer.keep_last_k
    assert {"final_test.json", "final_test.md"} <= {p.name for p in (run_dir / "eval").iterdir()}
    test = [r for r in recs if r.get("split") == "test"][-1]
    assert test["synthetic_data"] == ["advection1d", "darcy2d"]  # generated files are reported as such
    state = load_consolidated(run_dir / "checkpoints" / "operator" / "final")
    assert {"model", "optim", "trainer", "rank0", "callbacks"} <= state.keys()
    assert {"step", "scheduler", "sampler", "config", "epoch"} <= state["trainer"].keys()
    assert state["trainer"]["step"] == 60 and state["trainer"]["config"]["trainer"]["max_steps"] == 60
    exported = torch.load(run_dir / "checkpoints" / "operator" / "final" / "model.pt", weights_only=False)
    assert exported["step"] == 60 and exported["model"].keys() == state["model"].keys()


def test_interrupted_run_resumes_to_the_same_weights(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    common = ["trainer.steps_per_epoch=4", "optim.warmup_steps=2", "task=advection1d", "trainer.max_steps=16"]
    straight = run(tiny_cfg(*common, f"paths.output_dir={tmp_path / 'a'}"))

    cfg = tiny_cfg(*common, f"paths.output_dir={tmp_path / 'b'}")
    crash_run(cfg, lambda trainer: trainer.step == 10, monkeypatch)
    resumed = run(cfg)  # same run directory: continues from the step-8 checkpoint

    a = load_consolidated(tmp_path / "a" / "checkpoints" / "operator" / "final")["model"]
    b = load_consolidated(tmp_path / "b" / "checkpoints" / "operator" / "final")["model"]
    assert resumed["step"] == straight["step"] == 16
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda d: [r["loss"] for r in records(d) if r["kind"] == "train" and r["step"] > 8]  # noqa: E731
    assert losses(tmp_path / "b")[-8:] == losses(tmp_path / "a")


def test_finished_run_is_not_repeated(tiny_cfg) -> None:
    cfg = tiny_cfg("trainer.max_steps=6", "task=darcy2d", "trainer.steps_per_epoch=3")
    first = run(cfg)
    again = run(cfg)
    assert again["step"] == first["step"] == 6
    assert again["val/nrmse/darcy2d"] == pytest.approx(first["val/nrmse/darcy2d"])


def test_cli_default_entry_writes_one_run_dir(tmp_path: Path, data_dir: Path) -> None:
    args = [
        sys.executable,
        "-m",
        "ups.train",
        "task=darcy2d",
        "model=tiny",
        "optim.lr=3e-4",
        "trainer.max_steps=4",
        f"paths.data_dir={data_dir}",
        "data.generate=true",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "darcy2d" in proc.stdout and "val nRMSE" in proc.stdout and "data: SYNTHETIC" in proc.stdout
    run_dirs = list((tmp_path / "outputs").glob("*/*"))
    assert len(run_dirs) == 1
    lines = proc.stdout.splitlines()  # the run directory, first and last, so it is found without scrolling
    assert lines[0] == f"run directory: {run_dirs[0].resolve()}" and lines[-1].startswith(lines[0])
    assert {"config.yaml", "metrics.jsonl", "checkpoints", ".hydra"} <= {p.name for p in run_dirs[0].iterdir()}


def test_frozen_encoder_stage_trains_from_the_latent_cache(tiny_cfg, tmp_path: Path) -> None:
    run(tiny_cfg("trainer.max_steps=6", "trainer.steps_per_epoch=3", f"paths.output_dir={tmp_path / 'enc'}"))
    init = tmp_path / "enc" / "checkpoints" / "operator" / "final"
    result = run(
        tiny_cfg(
            "stage=operator_frozen_encoder",
            f"stages.operator.init_from={init}",
            "trainer.max_steps=24",
            "trainer.steps_per_epoch=6",
            "optim.warmup_steps=2",
            f"paths.output_dir={tmp_path / 'op'}",
        )
    )
    caches = [p for p in (tmp_path / "op" / "latent_cache").iterdir() if (p / "meta.json").exists()]
    assert sorted(p.name.split("-")[0] for p in caches) == ["advection1d", "darcy2d"]
    before = load_consolidated(init)["model"]
    after = load_consolidated(tmp_path / "op" / "checkpoints" / "operator" / "final")["model"]
    encoder = [k for k in before if k.startswith(("encoder.", "input_proj."))]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("operator."))
    assert result["epoch_losses"][-1] < result["epoch_losses"][0]


@pytest.mark.slow
def test_compile_and_activation_checkpointing_match_eager(tiny_cfg, tmp_path: Path) -> None:
    common = ["task=darcy2d", "trainer.max_steps=6", "trainer.steps_per_epoch=3"]
    eager = run(tiny_cfg(*common, f"paths.output_dir={tmp_path / 'eager'}"))
    fast = run(
        tiny_cfg(
            *common,
            "hardware.compile=true",
            "hardware.activation_checkpointing=true",
            f"paths.output_dir={tmp_path / 'fast'}",
        )
    )
    a = [r["loss"] for r in records(Path(eager["run_dir"])) if r["kind"] == "train"]
    b = [r["loss"] for r in records(Path(fast["run_dir"])) if r["kind"] == "train"]
    assert b == pytest.approx(a, rel=1e-4)
    # Parameter names do not change, so checkpoints load either way.
    assert (
        load_consolidated(Path(fast["run_dir"]) / "checkpoints" / "operator" / "final")["model"].keys()
        == load_consolidated(Path(eager["run_dir"]) / "checkpoints" / "operator" / "final")["model"].keys()
    )


def test_early_stopping_stops_when_validation_stalls(tiny_cfg) -> None:
    # lr=0 keeps the weights, so the second evaluation cannot improve on the first.
    result = run(
        tiny_cfg(
            "task=darcy2d",
            "optim.lr=0",
            "trainer.max_steps=20",
            "trainer.steps_per_epoch=2",
            "callbacks=[default,early_stopping]",
            "callbacks.early_stopping.patience=1",
        )
    )
    assert result["step"] == 4


@pytest.mark.parametrize("model", ["fno", "unet"])
def test_baselines_train_end_to_end_through_the_same_trainer(tiny_cfg, model: str) -> None:
    # A 1D time-dependent and a 2D steady task, one network each, same sampler, data and evaluation.
    result = run(
        tiny_cfg(
            f"model={model}",
            "trainer.max_steps=60",
            "trainer.steps_per_epoch=15",
            "optim.warmup_steps=4",
            "optim.lr=3e-3",
        )
    )
    assert len(result["epoch_losses"]) == 4 and result["epoch_losses"][-1] < 0.6 * result["epoch_losses"][0]
    for task in ("advection1d", "darcy2d"):
        assert 0.0 < result[f"test/nrmse/{task}"] < 10.0
    assert (Path(result["run_dir"]) / "checkpoints" / "operator" / "final" / MARKER).exists()


def test_diverged_weights_stop_after_the_consecutive_skip_limit(tiny_cfg, tmp_path: Path, data_dir: Path) -> None:
    from ups.training.failures import StopTraining

    # lr=1e30 makes the weights non-finite after the first step; every later step is skipped.
    with pytest.raises(StopTraining, match="3 steps in a row were skipped.*non-finite"):
        run(
            tiny_cfg(
                "task=darcy2d",
                "optim.lr=1e30",
                "optim.warmup_steps=1",
                "trainer.max_consecutive_skips=3",
                "trainer.max_steps=1000",
                "trainer.steps_per_epoch=5",
            )
        )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ups.train",
            "task=darcy2d",
            "model=tiny",
            "optim.lr=1e30",
            "optim.warmup_steps=1",
            "trainer.max_consecutive_skips=3",
            "trainer.max_steps=1000",
            f"paths.data_dir={data_dir}",
            "data.generate=true",
            "data.eval_samples=2",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Training stopped: stopping at step" in proc.stderr and "optim.lr=1e+30" in proc.stderr


def test_a_resumed_epoch_reports_the_mean_of_all_its_steps(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    common = ["task=darcy2d", "trainer.steps_per_epoch=4", "trainer.eval_every=2", "trainer.max_steps=8"]
    straight = run(tiny_cfg(*common, f"paths.output_dir={tmp_path / 'a'}"))
    cfg = tiny_cfg(*common, f"paths.output_dir={tmp_path / 'b'}")
    # after the step-6 checkpoint, half-way through the second epoch
    crash_run(cfg, lambda trainer: trainer.step == 6, monkeypatch)
    resumed = run(cfg)
    assert len(straight["epoch_losses"]) == 2 and resumed["epoch_losses"] == straight["epoch_losses"]


def test_a_cpu_out_of_memory_error_follows_the_oom_policy(tiny_cfg, monkeypatch) -> None:
    from ups.objectives import NextStep

    original, calls = NextStep.loss, {"n": 0}

    def cpu_oom_once(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 3:  # what the CPU allocator raises: a RuntimeError, not torch.OutOfMemoryError
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return original(self, model, batch)

    monkeypatch.setattr(NextStep, "loss", cpu_oom_once)
    result = run(tiny_cfg("task=darcy2d", "trainer.max_steps=6", "trainer.steps_per_epoch=6"))
    train = [json.loads(line) for line in (Path(result["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert result["step"] == 6 and [r for r in train if r["kind"] == "train"][-1]["skipped_steps"] == 1


def test_one_loader_per_stage_with_persistent_workers_trains_like_no_workers(tiny_cfg, tmp_path, monkeypatch) -> None:
    import ups.training.train_sets as train_sets_module

    built = []
    real = train_sets_module.DataLoader
    monkeypatch.setattr(train_sets_module, "DataLoader", lambda *a, **k: built.append(k) or real(*a, **k))
    runs = [
        run(
            tiny_cfg(
                "task=advection1d",
                "trainer.steps_per_epoch=3",
                "trainer.max_steps=9",
                f"data.num_workers={w}",
                f"paths.output_dir={tmp_path / str(w)}",
            )
        )
        for w in (0, 1)
    ]
    assert len(built) == 2 and built[1]["persistent_workers"] and not built[0]["persistent_workers"]  # 3 epochs each
    losses = [
        [
            json.loads(x)["loss"]
            for x in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()
            if json.loads(x)["kind"] == "train"
        ]
        for r in runs
    ]
    assert len(losses[0]) == 9 and losses[0] == losses[1]
