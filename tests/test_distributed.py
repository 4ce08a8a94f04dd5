"""Two gloo ranks on CPU: equivalence with one process, resume, faults and launching.

Every launch is a subprocess with a hard timeout and the process group has a short explicit
timeout, so a broken collective fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ups.training.checkpoint import load_consolidated

COMMON = [
    "hardware=cpu",
    "model=tiny",
    "trainer.log_every=1",
    "data.eval_samples=2",
    "data.generate=true",
    "parallelism.timeout_s=60",
    "optim.warmup_steps=2",
    "trainer.steps_per_epoch=4",
    "task.datasets.advection1d.synth.n_samples=16",
    "task.datasets.darcy2d.synth.n_samples=16",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def launch(
    run_dir: Path, data_dir: Path, *overrides: str, cmd: list[str] | None = None, timeout: int = 240
) -> subprocess.CompletedProcess:
    args = (cmd or [sys.executable, "-m", "ups.train"]) + COMMON + [f"paths.data_dir={data_dir}", *overrides]
    if run_dir is not None:
        args.append(f"paths.output_dir={run_dir}")
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
        cwd=run_dir.parent if run_dir is not None else None,
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    """Loss per step; a step logged twice (before and after a restart) keeps its last value."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "train":
            out[rec["step"]] = rec["loss"]
    return out


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_consolidated(run_dir / "checkpoints" / "operator" / "final")["model"]


@pytest.fixture(scope="module")
def single_b8(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("single") / "run"
    ok(launch(run_dir, data_dir, "trainer.max_steps=8", "trainer.batch_size=8"))
    return run_dir


@pytest.mark.parametrize("layout", ["ddp2", "fsdp2_2"])
def test_two_ranks_match_one_process_with_twice_the_batch(
    layout: str, single_b8: Path, data_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    ok(launch(run_dir, data_dir, f"parallelism={layout}", "trainer.max_steps=8", "trainer.batch_size=4"))
    one, two = losses(single_b8), losses(run_dir)
    assert sorted(two) == list(range(1, 9))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-6), f"step {step}"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["kind"] == "train")
    assert first["world_size"] == 2 and first["global_batch"] == 8
    # One task per step (sampler mode "task"): its loss is the step's, averaged over both ranks' samples.
    for r in (r for r in records if r["kind"] == "train"):
        (task_loss,) = [v for k, v in r.items() if k.startswith("loss/")]
        assert task_loss == pytest.approx(r["loss"], rel=1e-6)


def straight_and_crashed_agree(data_dir: Path, tmp_path: Path, common: list[str]) -> dict[str, torch.Tensor]:
    """Run ``common`` straight, then again with rank 1 dying hard after step 10 (the elastic agent
    restarts both ranks, which resume from step 8): same final weights and losses. Returns the weights."""
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    ok(launch(straight, data_dir, *common))
    proc = ok(
        launch(crashed, data_dir, *common, "faults.crash_rank=1", "faults.crash_step=10", "parallelism.max_restarts=1")
    )
    assert "resumed stage operator" in proc.stdout + proc.stderr
    a, b = final_weights(straight), final_weights(crashed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(straight) == losses(crashed)
    return a


@pytest.mark.parametrize("layout", ["ddp2", pytest.param("fsdp2_2", marks=pytest.mark.slow)])
def test_crash_and_restart_resumes_bit_identically(layout: str, data_dir: Path, tmp_path: Path) -> None:
    common = [f"parallelism={layout}", "trainer.max_steps=12", "trainer.batch_size=4", "model.dropout=0.1"]
    a = straight_and_crashed_agree(data_dir, tmp_path, common)
    straight = tmp_path / "straight"
    if layout == "ddp2":  # negative control: without restoring RNG, dropout masks differ after resume
        control = tmp_path / "control"
        ok(
            launch(
                control,
                data_dir,
                *common,
                "faults.crash_rank=1",
                "faults.crash_step=10",
                "parallelism.max_restarts=1",
                "faults.restore_rng=false",
            )
        )
        c = final_weights(control)
        assert not all(torch.equal(a[k], c[k]) for k in a)
        assert losses(control)[12] != losses(straight)[12]


@pytest.mark.slow  # over 30 s on 2 cores: pytest -m slow (the default suite stays near 15 min)
def test_two_stage_pipeline_crashed_in_stage_two_resumes_there_under_ddp(data_dir: Path, tmp_path: Path) -> None:
    # operator (6 steps) then finetune with a frozen encoder read from the latent cache (6 steps), 4 steps
    # an epoch; rank 1 dies after global step 11 = finetune step 5, after finetune's step-4 checkpoint.
    common = [
        "parallelism=ddp2",
        "stage=pretrain_finetune",
        "trainer.max_steps=6",
        "stages.finetune.steps=6",
        "trainer.batch_size=4",
    ]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    ok(launch(straight, data_dir, *common))
    proc = ok(
        launch(crashed, data_dir, *common, "faults.crash_rank=1", "faults.crash_step=11", "parallelism.max_restarts=1")
    )
    assert (
        "resumed stage finetune from" in proc.stdout + proc.stderr
        and "at step 4 (global step 10)" in proc.stdout + proc.stderr
    )
    a, b = (load_consolidated(d / "checkpoints" / "finetune" / "final")["model"] for d in (straight, crashed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(straight) == losses(crashed) and sorted(losses(crashed)) == list(range(1, 13))


@pytest.mark.parametrize("layout", ["ddp2", pytest.param("fsdp2_2", marks=pytest.mark.slow)])
def test_fno_on_two_ranks_matches_one_process(layout: str, data_dir: Path, tmp_path: Path) -> None:
    common = ["model=fno", "trainer.max_steps=4"]
    one, two = tmp_path / "one", tmp_path / "two"
    ok(launch(one, data_dir, *common, "trainer.batch_size=8"))
    ok(launch(two, data_dir, *common, f"parallelism={layout}", "trainer.batch_size=4"))
    assert losses(two) == pytest.approx(losses(one), rel=1e-4, abs=1e-6)


def _descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (from /proc), children first."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        kids = [p for p, parent in parents.items() if parent == current]
        out += kids
        todo += kids
    return out


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_ranks_exit_soon_after_the_launcher_is_killed(data_dir: Path, tmp_path: Path) -> None:
    import signal
    import time

    run_dir = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "ups.train",
        *COMMON,
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={run_dir}",
        "parallelism=ddp2",
        "trainer.max_steps=100000",
        "trainer.batch_size=4",
    ]
    launcher = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=tmp_path)
    ranks: list[int] = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (run_dir / "metrics.jsonl").exists():  # ranks are training
            time.sleep(0.5)
        assert (run_dir / "metrics.jsonl").exists(), "the job never started training"
        ranks = [
            p
            for p in _descendants(launcher.pid)
            if "spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
        ]
        assert len(ranks) == 2
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=30)
        deadline = time.time() + 20
        while time.time() < deadline and any(_running(p) for p in ranks):
            time.sleep(0.5)
        assert not [p for p in ranks if _running(p)], "ranks outlived their launcher by 20 s"
    finally:
        for p in [launcher.pid, *ranks]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_oom_on_one_rank_skips_the_step_on_both(data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = ok(
        launch(
            run_dir,
            data_dir,
            "parallelism=ddp2",
            "trainer.max_steps=6",
            "trainer.batch_size=4",
            "faults.oom_rank=1",
            "faults.oom_step=3",
        )
    )
    assert "step 3 skipped on all ranks: out of memory in forward" in proc.stdout + proc.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 7)) and train[-1]["skipped_steps"] == 1


def test_oom_under_fsdp2_stops_at_once_instead_of_hanging(data_dir: Path, tmp_path: Path) -> None:
    import time

    start = time.monotonic()
    proc = launch(
        tmp_path / "run",
        data_dir,
        "parallelism=fsdp2_2",
        "parallelism.timeout_s=600",
        "trainer.max_steps=6",
        "trainer.batch_size=4",
        "faults.oom_rank=0",
        "faults.oom_step=3",
        timeout=240,
    )
    assert proc.returncode == 1 and time.monotonic() - start < 120  # not parallelism.timeout_s
    assert "rank 0: Training stopped: rank 0 ran out of memory in forward at step 3 under FSDP2" in proc.stderr
    # one paragraph from the rank and one line from the launcher, not torch's 100-line failure report
    assert "Traceback" not in proc.stderr and "the job stopped: rank 0 stopped with the error above" in proc.stderr
    assert "StopTraining" in (tmp_path / "run" / "train.log").read_text()  # the traceback is kept there


def test_nonfinite_loss_with_stop_policy_stops_every_rank(data_dir: Path, tmp_path: Path) -> None:
    proc = launch(
        tmp_path / "run",
        data_dir,
        "parallelism=ddp2",
        "trainer.max_steps=6",
        "trainer.batch_size=4",
        "faults.nan_rank=0",
        "faults.nan_step=2",
        "trainer.on_nonfinite=stop",
        timeout=120,
    )
    assert proc.returncode == 1
    assert "stopping at step 2 on all ranks: non-finite loss" in proc.stdout + proc.stderr


@pytest.mark.slow  # over 30 s on 2 cores: pytest -m slow (the default suite stays near 15 min)
def test_four_ranks_from_a_plain_shell_write_one_run_dir(data_dir: Path, tmp_path: Path) -> None:
    args = [
        sys.executable,
        "-m",
        "ups.train",
        "parallelism=ddp4",
        *COMMON,
        f"paths.data_dir={data_dir}",
        "trainer.max_steps=2",
        "trainer.batch_size=2",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=ENV, cwd=tmp_path)
    ok(proc)
    assert "launching 4 ranks" in proc.stdout + proc.stderr
    run_dirs = list((tmp_path / "outputs").glob("*/*"))
    assert len(run_dirs) == 1
    elsewhere = tmp_path / "elsewhere"  # a run directory that is not Hydra's: the launcher still logs there
    ok(launch(elsewhere, data_dir, "parallelism=ddp2", "trainer.max_steps=2", "trainer.batch_size=2"))
    assert "launching 2 ranks" in (elsewhere / "train.log").read_text()
    records = [json.loads(line) for line in (run_dirs[0] / "metrics.jsonl").read_text().splitlines()]
    assert next(r for r in records if r["kind"] == "train")["world_size"] == 4


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_joins_and_writes_one_run_dir(data_dir: Path, tmp_path: Path) -> None:
    args = [
        "torchrun",
        "--nproc_per_node=2",
        "-m",
        "ups.train",
        "parallelism=ddp2",
        *COMMON,
        f"paths.data_dir={data_dir}",
        "trainer.max_steps=2",
        "trainer.batch_size=2",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=ENV, cwd=tmp_path)
    ok(proc)
    run_dirs = list((tmp_path / "outputs").glob("*/*"))
    assert len(run_dirs) == 1, run_dirs
    assert (run_dirs[0] / "checkpoints" / "operator" / "final" / "COMPLETE").exists()
    # INFO from rank 0 only: each evaluation is logged once, in the console and in the one train.log.
    log = (run_dirs[0] / "train.log").read_text()
    assert log.count("val nRMSE advection1d") == 1 and "[rank 1]" not in log
    assert proc.stdout.count("val nRMSE advection1d") == 1


def test_more_gpus_than_present_fails_at_once(tmp_path: Path) -> None:
    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine has 8 GPUs")
    proc = subprocess.run(
        [sys.executable, "-m", "ups.train", "parallelism=ddp8", "hardware=gpu"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "8 ranks per node need 8 GPUs" in proc.stderr and "hardware=cpu" in proc.stderr


def test_dry_run_reports_sharded_layout(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ups.train",
            "parallelism=fsdp2_8",
            "parallelism.dry_run=true",
            "model=base",
            "trainer.batch_size=4",
            "trainer.accum_steps=2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    ok(proc)
    assert "global batch = 4 per device x 2 accumulation x 8 ranks = 64" in proc.stdout
    total, per_rank = map(float, re.search(r"parameters ([\d.]+)M total, ([\d.]+)M held", proc.stdout).groups())
    assert per_rank == pytest.approx(total / 8, rel=0.02)


def test_frozen_encoder_stage_under_ddp_reads_one_cache(single_b8: Path, data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    ok(
        launch(
            run_dir,
            data_dir,
            "parallelism=ddp2",
            "stage=operator_frozen_encoder",
            "trainer.batch_size=4",
            f"stages.operator.init_from={single_b8 / 'checkpoints' / 'operator' / 'final'}",
            "trainer.max_steps=4",
        )
    )
    caches = [p for p in (run_dir / "latent_cache").iterdir()]
    assert len(caches) == 2 and all((p / "meta.json").exists() for p in caches)  # built once, by rank 0
    before, after = final_weights(single_b8), final_weights(run_dir)
    encoder = [k for k in before if k.startswith(("encoder.", "encode_basis.", "input_proj.", "position_proj."))]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)


# Loaded by every interpreter of the launch (sitecustomize on PYTHONPATH): rank 1 looks at the run
# directory 3 s late, after rank 0 has written a new run's config.yaml.
LATE_RANK = """
import os, pathlib, sys, time
_exists = pathlib.Path.exists
def _late(self, *args, **kwargs):
    if os.environ.get("RANK") == "1" and self.name == "config.yaml" and sys._getframe(1).f_code.co_filename.endswith("runner.py"):
        time.sleep(3)
    return _exists(self, *args, **kwargs)
pathlib.Path.exists = _late
"""


def test_ranks_agree_that_a_run_directory_is_new_when_one_looks_late(data_dir: Path, tmp_path: Path) -> None:
    """Rank 0 writes a new run's config.yaml at once; a rank that looked after that saw an existing run,
    took the branch with the run-directory check's barrier alone, and both ranks timed out (a CI flake)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(LATE_RANK)
    env = {**ENV, "PYTHONPATH": os.pathsep.join(p for p in (str(hook), ENV.get("PYTHONPATH", "")) if p)}
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "ups.train", "parallelism=ddp2", *COMMON, f"paths.data_dir={data_dir}"]
    args += [f"paths.output_dir={run_dir}", "trainer.max_steps=2", "trainer.batch_size=2"]
    ok(subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path))
    assert (run_dir / "checkpoints").is_dir()


def test_one_wandb_run_per_job_in_the_run_dir(data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**ENV, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    args = [
        sys.executable,
        "-m",
        "ups.train",
        "parallelism=ddp2",
        "logger=wandb",
        *COMMON,
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={run_dir}",
        "trainer.max_steps=2",
        "trainer.batch_size=2",
    ]
    ok(subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path))
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # rank 0 only, no account needed, mode left to WANDB_MODE


@pytest.mark.slow  # over 30 s on 2 cores: pytest -m slow (the default suite stays near 15 min)
def test_resume_on_another_world_size_continues_or_refuses(data_dir: Path, tmp_path: Path) -> None:
    common = ["trainer.max_steps=8", "trainer.eval_every=3", "trainer.steps_per_epoch=6"]
    straight, run_dir = tmp_path / "straight", tmp_path / "run"
    ok(launch(straight, data_dir, "parallelism=ddp2", "trainer.batch_size=4", *common))
    # ddp2 dies after step 4; its newest checkpoint is step 3, in the middle of an epoch.
    died = launch(
        run_dir,
        data_dir,
        "parallelism=ddp2",
        "trainer.batch_size=4",
        *common,
        "faults.crash_rank=1",
        "faults.crash_step=4",
    )
    assert died.returncode == 1
    refused = launch(run_dir, data_dir, "trainer.batch_size=4", *common)  # one process, global batch 4 != 8
    assert refused.returncode == 1 and "Config error: cannot resume" in refused.stderr
    assert "Traceback" not in refused.stderr and "Keep the global batch size at 8" in refused.stderr
    ok(launch(run_dir, data_dir, "trainer.batch_size=8", *common))  # one process, same global batch 8
    a, b = losses(straight), losses(run_dir)
    assert sorted(b) == list(range(1, 9))
    assert [b[s] for s in range(4, 9)] == pytest.approx([a[s] for s in range(4, 9)], rel=1e-4)


@pytest.mark.parametrize("layout", ["ddp2", pytest.param("fsdp2_2", marks=pytest.mark.slow)])
def test_latent_model_trains_1d_2d_3d_together_and_resumes_bit_identically(
    layout: str, data_dir: Path, tmp_path: Path
) -> None:
    """One latent network on a 1D, a 2D and a 3D task, two ranks: every task trains, and a crash
    and restart ends with the straight run's weights and losses."""
    common = [
        f"parallelism={layout}",
        "task=dims3",
        "task.datasets.cfd3d.synth.n_samples=4",
        "trainer.max_steps=12",
        "trainer.batch_size=2",
    ]
    a = straight_and_crashed_agree(data_dir, tmp_path, common)
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    trained = {k.split("/", 1)[1] for r in records if r["kind"] == "train" for k in r if k.startswith("loss/")}
    assert trained == {"advection1d", "darcy2d", "cfd3d"}
    # The shared operator holds a spectral filter per dimension present, the 3D one included.
    assert {k.rsplit(".", 1)[1] for k in a if ".spectral.filters." in k} == {"1", "2", "3"}
