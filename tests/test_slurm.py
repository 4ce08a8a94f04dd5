"""SLURM: the launcher preset is sized from parallelism= and cluster=, a stop on SIGUSR2 requeues the
job (scontrol under sbatch, submitit's handler under submitit), and the requeued job resumes to the
same weights as an uninterrupted run, under sbatch and under submitit's local executor."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from ups.distributed.env import slurm_requeue
from ups.training.checkpoint import load_consolidated


def test_the_slurm_launcher_is_sized_from_parallelism_and_cluster() -> None:
    with initialize_config_module("ups.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "cluster=example", "parallelism=ddp4", "cluster.timeout_min=30"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 4, 4)
    assert (launcher.timeout_min, launcher.partition, launcher.signal_delay_s) == (30, "gpu", 120)
    assert launcher.max_num_timeout == 3 and launcher.additional_parameters.requeue is True


def _fake_scontrol(tmp_path: Path) -> tuple[dict, Path]:
    """A PATH whose ``scontrol`` records its arguments instead of talking to SLURM."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, calls


def test_requeue_only_on_sigusr2_from_rank_0(tmp_path: Path, monkeypatch) -> None:
    path, calls = _fake_scontrol(tmp_path)
    monkeypatch.setenv("PATH", path["PATH"])
    slurm = {"SLURM_JOB_ID": "4242"}
    assert slurm_requeue(signal.SIGTERM, slurm) is None  # scancel: never requeue
    assert slurm_requeue(signal.SIGUSR2, {**slurm, "RANK": "1"}) is None
    assert slurm_requeue(signal.SIGUSR2, {**slurm, "UPS_REQUEUE": "0"}) is None
    assert slurm_requeue(signal.SIGUSR2, {}) is None  # not under SLURM
    assert not calls.exists()
    assert "requeued SLURM job 4242" in slurm_requeue(signal.SIGUSR2, slurm)
    assert "requeued SLURM job 7_3" in slurm_requeue(
        signal.SIGUSR2, {**slurm, "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "3"}
    )
    assert calls.read_text().split("\n")[:2] == ["requeue 4242", "requeue 7_3"]


def test_under_submitit_the_signal_goes_on_to_submitits_handler() -> None:
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    try:
        assert "submitit" in slurm_requeue(signal.SIGUSR2, {"SUBMITIT_EXECUTOR": "local"})
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen == [signal.SIGUSR2]


COMMON = [
    "hardware=cpu",
    "hardware.threads=1",
    "model=tiny",
    "task=advection1d",
    "data.generate=true",
    "data.eval_samples=2",
    "trainer.log_every=1",
    "trainer.batch_size=4",
    "trainer.max_steps=40",
    "trainer.eval_every=10",
]


@pytest.mark.slow  # over 30 s on 2 cores: pytest -m slow (the default suite stays near 15 min)
def test_a_time_limit_warning_checkpoints_requeues_and_the_job_resumes_identically(
    tmp_path: Path, data_dir: Path
) -> None:
    path, calls = _fake_scontrol(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": "777", **path}

    def train(run_dir: Path, **kw):
        args = [sys.executable, "-m", "ups.train", *COMMON, f"paths.data_dir={data_dir}", f"paths.output_dir={run_dir}"]
        return subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, **kw
        )

    straight = train(tmp_path / "a")
    assert straight.wait(timeout=300) == 0, straight.communicate()[1][-3000:]
    job = train(tmp_path / "b")
    metrics = tmp_path / "b" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and job.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.2)
    job.send_signal(signal.SIGUSR2)  # what SLURM sends signal_delay_s before the time limit
    _, err = job.communicate(timeout=120)
    assert job.returncode == 128 + signal.SIGUSR2, err[-3000:]
    assert "requeued SLURM job 777" in err
    assert calls.read_text().strip() == "requeue 777"
    requeued = train(tmp_path / "b")  # SLURM starts the same job again: same command, same run directory
    assert requeued.wait(timeout=300) == 0, requeued.communicate()[1][-3000:]
    a, b = (load_consolidated(tmp_path / d / "checkpoints" / "operator" / "final")["model"] for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _descendants(root: int) -> list[int]:
    """The processes below ``root`` (Linux ``/proc``): here, submitit's controller and its tasks."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _submitit_tasks(root: int) -> list[int]:
    tasks = []
    for pid in _descendants(root):
        try:
            if b"submitit.core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes():
                tasks.append(pid)
        except OSError:
            continue
    return tasks


@pytest.mark.skipif(sys.platform != "linux", reason="submitit's local executor, /proc")
def test_submitit_local_ddp_job_is_preempted_requeued_and_resumes_identically(tmp_path: Path, data_dir: Path) -> None:
    """Two tasks of submitit's local executor form one DDP job of 2 gloo ranks; SIGUSR2 to both (what
    SLURM and submitit's controller send before the time limit) checkpoints, submitit requeues the job,
    it resumes in the same job folder and ends with the weights of an uninterrupted run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = [*COMMON, "parallelism=ddp2", "parallelism.timeout_s=60", f"paths.data_dir={data_dir}"]
    straight = subprocess.run(
        [sys.executable, "-m", "ups.train", *run, f"paths.output_dir={tmp_path / 'a'}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    sweep = tmp_path / "sweep"
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ups.train",
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.tasks_per_node=2",
            "hydra.launcher.timeout_min=10",
            *run,
            f"hydra.sweep.dir={sweep}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        metrics, deadline = sweep / "0" / "metrics.jsonl", time.time() + 240
        while time.time() < deadline and job.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 8:
                break
            time.sleep(0.2)
        tasks = _submitit_tasks(job.pid)
        assert len(tasks) == 2 and job.poll() is None, (tasks, job.poll())
        for pid in tasks:
            os.kill(pid, signal.SIGUSR2)
        out, _ = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            for pid in _descendants(job.pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            job.kill()
    assert job.returncode == 0, out[-3000:]
    logs = "\n".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in logs, logs[-3000:]
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert {r.get("world_size") for r in records if "world_size" in r} == {2}
    assert "resumed stage operator from" in (sweep / "0" / "train.log").read_text()
    a, b = (load_consolidated(d / "checkpoints" / "operator" / "final")["model"] for d in (tmp_path / "a", sweep / "0"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_slurm_launcher_without_sbatch_is_one_paragraph(tmp_path, monkeypatch) -> None:
    """Off a cluster, -m hydra/launcher=slurm was a 25-line traceback from inside Hydra's launcher."""
    import subprocess
    import sys

    from ups.distributed.env import slurm_unavailable

    assert slurm_unavailable(["task=advection1d"]) is None
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/sbatch")
    assert slurm_unavailable(["-m", "hydra/launcher=slurm"]) is None
    monkeypatch.undo()
    env = {k: v for k, v in __import__("os").environ.items()}
    env["PATH"] = str(tmp_path)  # no sbatch here
    proc = subprocess.run(
        [sys.executable, "-m", "ups.train", "-m", "hydra/launcher=slurm", "trainer.batch_size=4,8"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("Config error: hydra/launcher=slurm submits the jobs with SLURM's sbatch")
    assert not (tmp_path / "multirun").exists()
