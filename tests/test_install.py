"""Both installs find the configs: the editable one under test, and a regular wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_install_composes_from_anywhere(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("ups-*.whl"))
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    # PYTHONPATH comes before the editable install's finder, so this imports the wheel's copy.
    env = {**os.environ, "PYTHONPATH": str(site)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", "import ups, ups.data.synth, ups.models; print(ups.__file__)"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(site))
    proc = subprocess.run(
        [sys.executable, "-m", "ups.train", "--cfg", "job", "task=darcy2d", "model=base"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "hidden: 128" in proc.stdout and "2D_DarcyFlow" in proc.stdout
    shipped = {p.relative_to(site / "ups" / "conf").as_posix() for p in (site / "ups" / "conf").rglob("*.yaml")}
    in_repo = {p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert shipped == in_repo
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "ups").rglob("__init__.py")}
    assert all((site / pkg / "__init__.py").exists() for pkg in packages), "a subpackage is missing from pyproject"


@pytest.mark.skipif(shutil.which("ups-train") is None, reason="console script not installed")
def test_console_script_matches_module(tmp_path: Path) -> None:
    args = ["--cfg", "job", "model=small", "trainer.batch_size=4"]
    script = subprocess.run(["ups-train", *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    module = subprocess.run(
        [sys.executable, "-m", "ups.train", *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert script.returncode == module.returncode == 0
    assert script.stdout == module.stdout
