"""Every option of every group composes and builds; bad overrides fail with the key named."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate

from tests.conftest import compose_cfg
from ups.config import ConfigError, validate
from ups.models import TaskIO

CONF = Path(__file__).resolve().parents[1] / "conf"
OPTIONS = [(g.name, f.stem) for g in sorted(CONF.iterdir()) if g.is_dir() and g.name != "__pycache__"
           for f in sorted(g.glob("*.yaml"))]
IO = {"advection1d": TaskIO(10, 1, 1), "darcy2d": TaskIO(1, 1, 2)}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_and_builds(group: str, option: str) -> None:
    cfg = compose_cfg([f"{group}={option}", "paths.data_dir=d", "paths.output_dir=o"])
    validate(cfg)
    with torch.device("meta"):  # large models build without allocating memory
        model = instantiate(cfg.model, tasks=IO)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_misspelt_key_names_it() -> None:
    with pytest.raises(ConfigCompositionException, match="max_stpes"):
        compose_cfg(["trainer.max_stpes=3"])


def test_wrong_type_names_key() -> None:
    with pytest.raises(ConfigCompositionException, match="batch_size"):
        compose_cfg(["trainer.batch_size=abc"])


def test_unknown_option_lists_options() -> None:
    with pytest.raises(MissingConfigException, match="tinny"):
        compose_cfg(["model=tinny"])


def test_cross_field_rules_name_the_key() -> None:
    cfg = compose_cfg(["paths.data_dir=d", "paths.output_dir=o", "trainer.accum_steps=0"])
    with pytest.raises(ConfigError, match="trainer.accum_steps"):
        validate(cfg)
    cfg = compose_cfg(["paths.data_dir=d", "paths.output_dir=o", "data.sampler.strategy=uniform"])
    with pytest.raises(ConfigError, match="data.sampler.strategy"):
        validate(cfg)


@pytest.mark.parametrize("override,needle", [("trainer.max_stpes=3", "max_stpes"), ("model=tinny", "tinny")])
def test_cli_error_is_one_paragraph_without_traceback(override: str, needle: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ups.train", override], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_cfg_job_prints_config(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ups.train", "--cfg", "job"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "advection1d:" in proc.stdout and "max_steps:" in proc.stdout


def test_hardware_auto_picks_available_device() -> None:
    from ups.distributed.env import DistEnv, resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", DistEnv()).type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="hardware=cpu"):
            resolve_device("cuda", DistEnv())
