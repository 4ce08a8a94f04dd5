"""Start-up stays light: ``--help``, ``--cfg job`` and shell completion compose a config without
importing torch (which alone took longer than the rest of the start-up).

Each case runs the real entry point in a fresh interpreter, from an empty folder, and reports
whether ``torch`` ended up in ``sys.modules``. Timings are measured by hand (docs/configuration.md),
not here: the test machines are shared.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs ``python -m <module> <args>`` in-process, then prints a marker saying whether torch was imported.
_PROBE = """
import runpy, sys
module, sys.argv = sys.argv[1], [sys.argv[1]] + sys.argv[2:]
code = 0
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as stop:
    code = stop.code
print("TORCH_IMPORTED" if "torch" in sys.modules else "TORCH_NOT_IMPORTED")
sys.exit(code)
"""


def _probe(tmp_path: Path, module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the entry point from an empty ``tmp_path`` and check that it wrote nothing there."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, module, *args],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not list(tmp_path.iterdir()), f"{module} {' '.join(args)} wrote {list(tmp_path.iterdir())}"
    return proc


def _torch_free(proc: subprocess.CompletedProcess) -> bool:
    marker = proc.stdout.strip().splitlines()[-1]
    assert marker in ("TORCH_IMPORTED", "TORCH_NOT_IMPORTED"), proc.stdout + proc.stderr
    return marker == "TORCH_NOT_IMPORTED"


@pytest.mark.parametrize("module", ["ups.train", "ups.tune", "ups.evaluate", "ups.report"])
def test_help_does_not_import_torch(tmp_path: Path, module: str) -> None:
    proc = _probe(tmp_path, module, "--help")
    assert proc.returncode == 0, proc.stderr
    if module in ("ups.train", "ups.tune"):  # the groups a user picks from (the internal schema/model left out)
        assert "== Configuration groups ==" in proc.stdout and "\nmodel: base, fno, " in proc.stdout
    elif module == "ups.evaluate":  # its own options only
        assert "== Options (key=value) ==" in proc.stdout and "checkpoint: both" in proc.stdout
    assert _torch_free(proc)


def test_cfg_job_composes_typed_config_without_torch(tmp_path: Path) -> None:
    proc = _probe(tmp_path, "ups.train", "--cfg", "job", "model=fno", "trainer.max_steps=3")
    assert proc.returncode == 0, proc.stderr
    # The family's schema supplies defaults its YAML does not set: the schema was registered.
    assert "_target_: ups.models.fno.FNO" in proc.stdout and "max_steps: 3" in proc.stdout
    assert _torch_free(proc)


def test_typo_still_fails_at_compose_time(tmp_path: Path) -> None:
    """The model schemas are typed without torch too: a misspelt model key is refused, naming it."""
    proc = _probe(tmp_path, "ups.train", "--cfg", "job", "model=fno", "model.mode=3")
    assert proc.returncode == 1
    assert "mode" in proc.stderr and "FNOConfig" in proc.stderr, proc.stderr
    assert _torch_free(proc)


def test_shell_completion_does_not_import_torch(tmp_path: Path) -> None:
    proc = _probe(tmp_path, "ups.train", "-sc", "query=bash", env={"COMP_LINE": "ups-train model=fno model."})
    assert proc.returncode == 0, proc.stderr
    assert "model.modes=" in proc.stdout
    assert _torch_free(proc)


def test_every_family_schema_is_in_the_torch_free_registry() -> None:
    """Configs compose from ``model_schemas()``, read without torch; each registered model spec must
    name that very class (the one its module's ``@schema`` returned)."""
    from ups.models.schemas import model_schemas
    from ups.models.spec import specs

    assert {s.name: s.schema for s in specs()} == model_schemas()


def test_repository_copies_share_the_config_store() -> None:
    """Hydra copies its repository once per listed group; the store must not be copied with it
    (that was 2 of the 3 s of ``--help``), and launchers must still be able to pickle it."""
    import copy
    import pickle

    from hydra.core.config_store import ConfigStore

    from ups.config import register_configs

    register_configs()
    store = ConfigStore.instance()
    assert copy.deepcopy({"store": store})["store"] is store
    assert "train_schema.yaml" in pickle.loads(pickle.dumps(store)).repo  # launchers send it to each job
