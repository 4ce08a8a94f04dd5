"""launch/compare.py: two models for the same budget end in one table with the trivial predictors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_compare_writes_one_table_for_two_models(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    cmd = [sys.executable, str(ROOT / "launch" / "compare.py"), "--task", "darcy2d", "--budget-s", "2",
           "--models", "tiny", "fno", "--out", str(out), "--data-dir", str(data_dir), "--hardware", "cpu",
           "--", "data.eval_samples=2", "task.datasets.darcy2d.synth.n_samples=16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "comparison.md").read_text()
    assert "| task | tiny | fno | persistence | training-mean field |" in table
    row = next(line for line in table.splitlines() if line.startswith("| darcy2d |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert all(float(c) > 0 for c in cells[1:3]) and cells[3] == "–" and float(cells[4]) > 0
    assert "| tiny |" in table and "| fno |" in table  # the budget table: parameters, steps, samples/s
