"""The environment module: ranks, run-directory naming and SLURM export, without a process group."""

from __future__ import annotations

import os
from unittest import mock

from ups.distributed.env import DistEnv, export_slurm_env, in_launched_rank, run_dir_name


def test_dist_env_reads_torchrun_variables() -> None:
    env = DistEnv.from_env(
        {
            "RANK": "3",
            "LOCAL_RANK": "1",
            "WORLD_SIZE": "8",
            "LOCAL_WORLD_SIZE": "4",
            "TORCHELASTIC_RESTART_COUNT": "1",
            "UPS_RESTART_COUNT": "1",
        }
    )
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size, env.restart_count) == (3, 1, 8, 4, 2)
    assert env.distributed and not env.is_main
    assert DistEnv.from_env({}) == DistEnv()
    assert in_launched_rank({"RANK": "0", "WORLD_SIZE": "2"}) and not in_launched_rank({})


def test_run_dir_is_shared_by_ranks_of_one_job() -> None:
    torchrun = {"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    # Two ranks of one torchrun on one node share a parent, so they get the same name.
    assert run_dir_name(torchrun) == run_dir_name(dict(torchrun))
    assert run_dir_name({"TORCHELASTIC_RUN_ID": "job7", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}) == "run-job7"
    assert run_dir_name({"SLURM_JOB_ID": "123", "SLURM_NTASKS": "4"}) == "slurm-123"
    assert len(run_dir_name({}).split("/")) == 2  # <date>/<time>


def test_slurm_step_exports_ranks() -> None:
    slurm = {
        "SLURM_JOB_ID": "42",
        "SLURM_NTASKS": "4",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "gpu[01-02]",
        "SLURM_STEP_NODELIST": "gpu[01-02]",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NUM_NODES": "2",
    }
    # patch.dict restores the whole environment, including the variables the export adds: a leaked
    # WORLD_SIZE would make every later in-process run wait for ranks that never come.
    with mock.patch.dict(os.environ, slurm):
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
            os.environ.pop(key, None)
        _check_slurm_export()
    assert "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] != "4"


def _check_slurm_export() -> None:
    assert export_slurm_env()
    env = DistEnv.from_env()
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    assert os.environ["MASTER_ADDR"] == "gpu01"
    assert not export_slurm_env()  # already a rank: nothing to do
