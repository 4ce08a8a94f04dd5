"""Every option of every group composes and builds; bad overrides fail with the key named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, MissingConfigException

from tests.conftest import compose_cfg
from ups.config import ConfigError, validate
from ups.data.registry import COND_DIM
from ups.models import TaskIO, build
from ups.objectives import build_objective
from ups.runner import build_callbacks

CONF = Path(__file__).resolve().parents[1] / "conf"
OPTIONS = [
    (g.name, f.stem)
    for g in sorted(CONF.iterdir())
    if g.is_dir() and g.name != "__pycache__"
    for f in sorted(g.glob("*.yaml"))
]
IO = {"advection1d": TaskIO(10, 1, 1, (64,)), "darcy2d": TaskIO(1, 1, 2, (32, 32))}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_and_builds(group: str, option: str) -> None:
    cfg = compose_cfg([f"{group}={option}", "paths.data_dir=d", "paths.output_dir=o"])
    validate(cfg)
    with torch.device("meta"):  # large models build without allocating memory
        model = build(cfg.model, IO, COND_DIM)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert build_callbacks(cfg)
    for name, stage in cfg.stages.items():
        assert build_objective(stage.objective, f"stages.{name}")


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["model.hiden=3"], "hiden"),
        (["model.cond_dim=8"], "cond_dim"),
        (["model=fno", "model.widht=3"], "widht"),
        (["model=unet", "model.hidden=3"], "hidden"),
    ],
)
def test_each_model_family_checks_its_own_keys(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigCompositionException, match=needle):
        compose_cfg(overrides)


def test_callback_and_objective_arguments_are_checked_when_built() -> None:
    cfg = compose_cfg(
        [
            "paths.data_dir=d",
            "paths.output_dir=o",
            "+callbacks.ema._target_=ups.training.callbacks.EMA",
            "+callbacks.ema.decai=0.9",
        ]
    )
    with pytest.raises(ConfigError, match="callbacks.ema"):
        build_callbacks(cfg)
    cfg = compose_cfg(["paths.data_dir=d", "paths.output_dir=o", "+stages.operator.objective.residul=true"])
    with pytest.raises(ConfigError, match="stages.operator.objective"):
        build_objective(cfg.stages.operator.objective, "stages.operator")


def test_stage_steps_zero_and_negative() -> None:
    cfg = compose_cfg(["paths.data_dir=d", "paths.output_dir=o", "stages.operator.steps=0"])
    with pytest.raises(ConfigError, match="every stage has steps=0"):
        validate(cfg)
    cfg = compose_cfg(["paths.data_dir=d", "paths.output_dir=o", "stages.operator.steps=-1"])
    with pytest.raises(ConfigError, match="stages.operator.steps"):
        validate(cfg)


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
    cfg = compose_cfg(["paths.data_dir=d", "paths.output_dir=o", "+data.sampler.weights.advection1d=2"])
    validate(cfg)  # a task of the run: fine
    for override, needle in (
        ("+data.sampler.weights.advection=2", "its datasets: advection1d, darcy2d"),
        ("+data.sampler.weights.darcy2d=0", "finite number > 0"),
    ):
        with pytest.raises(ConfigError, match=needle):
            validate(compose_cfg(["paths.data_dir=d", "paths.output_dir=o", override]))


@pytest.mark.parametrize("override,needle", [("trainer.max_stpes=3", "max_stpes"), ("model=tinny", "tinny")])
def test_cli_error_is_one_paragraph_without_traceback(override: str, needle: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ups.train", override], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 1
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_cfg_job_prints_config(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ups.train", "--cfg", "job"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "advection1d:" in proc.stdout and "max_steps:" in proc.stdout


def test_hardware_auto_picks_available_device() -> None:
    from ups.distributed.env import DistEnv, resolve_device
    from ups.errors import ConfigError

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", DistEnv()).type == expected
    with pytest.raises(ConfigError, match="not one of auto, cpu, cuda"):
        resolve_device("tpu", DistEnv())
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="hardware=cpu"):
            resolve_device("cuda", DistEnv())


@pytest.mark.parametrize(
    "override,needle",
    [
        ("+trainer.max_step=10", "trainer.max_step (did you mean trainer.max_steps?)"),
        ("+stages.operator.stepz=3", "stages.operator.stepz"),
        ("trainer.eval_every=0", "trainer.eval_every must be at least 1"),
        ("optim.lr=nan", "optim.lr must be a finite number"),
        ("optim.lr=-0.001", "optim.lr must be a finite number"),
        ("stages.operator.lr=inf", "stages.operator.lr must be a finite number"),
    ],
)
def test_settings_that_would_be_ignored_or_fail_later_are_refused(override: str, needle: str) -> None:
    cfg = compose_cfg(["paths.data_dir=d", "paths.output_dir=o", override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert needle in str(err.value)
