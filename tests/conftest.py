"""Shared fixtures: config composition as tests use it, and one synthetic data dir per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Before torch is imported (ups.config imports it): one thread per test process, so the ranks that
# tests launch do not oversubscribe the 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Caches of data directories UPS only reads go to UPS_CACHE_DIR: one fresh folder per session, never ~/.cache.
os.environ["UPS_CACHE_DIR"] = tempfile.mkdtemp(prefix="ups-cache-")
atexit.register(shutil.rmtree, os.environ["UPS_CACHE_DIR"], True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ups.config import register_configs  # noqa: E402

register_configs()
_RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def no_leaked_rank_variables():
    """Fail the test that leaves rank variables behind: later in-process runs would wait for ranks."""
    before = {k: os.environ.get(k) for k in _RANK_VARS}
    yield
    after = {k: os.environ.get(k) for k in _RANK_VARS}
    assert after == before, f"test changed the process environment: {before} -> {after}"


def compose_cfg(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/train.yaml`` with overrides, the way the CLI does (but raising, not exiting)."""
    with initialize_config_module(config_module="ups.conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides or []))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory shared by the session, so synthetic files are generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def tiny_cfg(data_dir: Path, tmp_path: Path):
    """A factory for a small, fast run config writing into a fresh run directory."""

    def make(*overrides: str) -> DictConfig:
        base = [
            "model=tiny",
            "hardware=cpu",
            f"paths.data_dir={data_dir}",
            "data.generate=true",
            f"paths.output_dir={tmp_path / 'run'}",
            "trainer.max_steps=30",
            "trainer.batch_size=8",
            "trainer.log_every=1",
            "data.eval_samples=4",
        ]
        cfg = compose_cfg(base + list(overrides))
        for ds in cfg.task.datasets.values():
            ds.synth.n_samples = 16  # small files, generated once into the shared data_dir
        return cfg

    return make


def crash_run(cfg: DictConfig, when, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``cfg`` until ``when(trainer)`` holds at the start of an optimizer step, then crash it.

    The crash is an exception, so the run directory keeps whatever checkpoints were complete; the
    trainer is restored afterwards, so the next ``run(cfg)`` resumes as a restarted job would.
    """
    from ups.runner import run
    from ups.training.trainer import Trainer

    original = Trainer._optimizer_step

    def crashing(self, *args):
        if when(self):
            raise RuntimeError("simulated crash")
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_optimizer_step", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg)
    monkeypatch.setattr(Trainer, "_optimizer_step", original)
