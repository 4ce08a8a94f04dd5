"""Adding a model family is two files: its module (the network, its ``@schema`` dataclass, its
``register(ModelSpec(...))``) and its ``conf/model/<x>.yaml`` (plus the docs row test_docs asks for).

The test writes exactly those two files into a temporary folder that ``ups.models``' path and the
config search path include, as if they were dropped into ``ups/models/`` and ``ups/conf/model/``,
then composes ``model=<x>`` as the command line does (the schema read without importing torch) and
trains two steps with the normal ``run(cfg)``. Nothing else is edited or registered by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore

import ups.models
from tests.conftest import compose_cfg
from ups.config import register_configs
from ups.models import schemas, spec

MODULE = '''
"""A pointwise MLP per task: the smallest family the stack can train."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ups.models.schemas import schema
from ups.models.spec import ModelSpec, as_task_io, module_keys, register


@schema("pointwise")
@dataclass
class PointwiseConfig:
    _target_: str = "ups.models.pointwise_added.Pointwise"
    hidden: int = 8


class Pointwise(nn.Module):
    def __init__(self, tasks, cond_dim: int = 0, hidden: int = 8):
        super().__init__()
        tasks = {name: as_task_io(io) for name, io in tasks.items()}
        self.keys = module_keys(list(tasks))
        self.nets = nn.ModuleDict({self.keys[name]: nn.Sequential(nn.Linear(io.in_channels, hidden), nn.GELU(),
                                                                  nn.Linear(hidden, io.out_channels))
                                   for name, io in tasks.items()})

    def forward(self, task, x, coords, cond=None, grid=None, latents=None):
        return self.nets[self.keys[task]](x)


register(ModelSpec(name="pointwise", model=Pointwise, schema=PointwiseConfig,
                   blocks=lambda m: list(m.nets.values()), groups=lambda m: {"nets": m.nets}))
'''

YAML = """\
defaults:
  - /schema/model/pointwise@_here_
  - _self_
hidden: 4
"""


def _forget_families() -> None:
    """Families are imported once per process; make the next lookup search ``ups.models``' path again
    (schemas are looked up on every call, each file read once)."""
    spec._import_families.cache_clear()


@pytest.fixture
def added_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The two files of a new family, in folders ``ups.models`` and the config search path include."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "pointwise_added.py").write_text(textwrap.dedent(MODULE))
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "pointwise.yaml").write_text(YAML)
    monkeypatch.setattr(ups.models, "__path__", [*ups.models.__path__, str(tmp_path / "models")])
    _forget_families()
    register_configs()  # as every entry point does at start-up
    yield tmp_path
    # leave the process as other tests expect it: no such family, module or stored schema
    module = sys.modules.pop("ups.models.pointwise_added", None)
    if module is not None:
        spec._SPECS.pop(module.Pointwise, None)
    ConfigStore.instance().repo["schema"]["model"].pop("pointwise.yaml", None)
    monkeypatch.undo()
    _forget_families()


def test_a_new_family_is_two_files_and_trains(added_model: Path, data_dir: Path, tmp_path: Path) -> None:
    files = sorted(p.relative_to(added_model).as_posix() for p in added_model.rglob("*") if p.is_file())
    assert files == ["conf/model/pointwise.yaml", "models/pointwise_added.py"]
    cfg = compose_cfg(
        [
            "model=pointwise",
            "task=advection1d",
            "hardware=cpu",
            f"paths.data_dir={data_dir}",
            "data.generate=true",
            f"paths.output_dir={tmp_path / 'run'}",
            "trainer.max_steps=2",
            "trainer.batch_size=4",
            "trainer.log_every=1",
            "data.eval_samples=2",
            f"hydra.searchpath=[file://{added_model / 'conf'}]",
        ]
    )
    assert cfg.model.hidden == 4 and cfg.model._target_ == "ups.models.pointwise_added.Pointwise"
    for ds in cfg.task.datasets.values():
        ds.synth.n_samples = 16  # the shared data_dir's size (tiny_cfg): other tests count its trajectories
    from ups.runner import run

    out = run(cfg)
    assert out["step"] == 2
    train = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in train if r["kind"] == "train"] == [1, 2]
    (family,) = [s for s in spec.specs() if s.name == "pointwise"]
    assert family.schema is schemas.model_schemas()["pointwise"]  # one class: config store and spec


def test_its_config_is_typed_at_composition(added_model: Path) -> None:
    """The new family's schema checks its keys as the built-in ones do: a misspelt key is refused."""
    with pytest.raises(Exception, match="hiden"):
        compose_cfg(["model=pointwise", "model.hiden=3", f"hydra.searchpath=[file://{added_model / 'conf'}]"])


def test_a_schema_that_needs_its_module_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A schema is read without importing its module, so it may not use the module's other names."""
    (tmp_path / "needs_module.py").write_text(
        textwrap.dedent("""
        from dataclasses import dataclass
        from ups.models.schemas import schema
        WIDTH = 8

        @schema("needs_module")
        @dataclass
        class NeedsModuleConfig:
            width: int = WIDTH
        """)
    )
    monkeypatch.setattr(ups.models, "__path__", [*ups.models.__path__, str(tmp_path)])
    with pytest.raises(schemas.SchemaError, match="NeedsModuleConfig uses 'WIDTH'"):
        schemas.model_schemas()


def test_schemas_are_read_without_importing_torch() -> None:
    code = (
        "import sys; from ups.models.schemas import model_schemas; s = model_schemas(); "
        "assert {'latent', 'fno', 'unet'} <= set(s), s; print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
