"""launch/box.py writes a start-up script for a rented GPU machine; checked, never run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, *args: str) -> str:
    out = tmp_path / "start.sh"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "box.py"), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert subprocess.run(["bash", "-n", str(out)], capture_output=True).returncode == 0  # valid bash
    return out.read_text()


def test_an_8_gpu_box_checks_installs_syncs_and_starts_ddp8(tmp_path: Path) -> None:
    text = _write(
        tmp_path,
        "--gpus",
        "8",
        "--data",
        "s3://bucket/pdebench",
        "--repo",
        "https://example.org/ups.git",
        "--",
        "task=pdebench11",
        "model=base",
        "trainer.batch_size=32",
    )
    steps = [line for line in text.splitlines() if line.startswith('echo "== ')]
    assert [s.split()[2] for s in steps] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert '[ "$found" -ge 8 ]' in text and "nvidia-smi" in text
    assert "git clone --branch main https://example.org/ups.git ups" in text and "pip install -q -e ." in text
    assert 'dist.init_process_group("nccl"' in text and "world = 8" in text
    assert "aws s3 sync s3://bucket/pdebench /data/pdebench/" in text
    assert (
        "nohup python -m ups.train parallelism=ddp8 hardware=gpu paths.data_dir=/data/pdebench "
        "paths.output_dir=runs/box task=pdebench11 model=base trainer.batch_size=32 > train.out"
    ) in text


@pytest.mark.parametrize(
    "source,command",
    [
        ("/mnt/pdebench", "rsync -a --partial --info=progress2 /mnt/pdebench/"),
        ("https://host/pdebench.tar", "curl -fL --retry 5 https://host/pdebench.tar"),
    ],
)
def test_one_gpu_data_sources_and_fsdp(tmp_path: Path, source: str, command: str) -> None:
    text = _write(tmp_path, "--gpus", "1", "--data", source, "--data-dir", "/d")
    assert command in text and "parallelism=single" in text and 'cd "$(dirname "$0")"' in text
    assert "parallelism=fsdp2_4" in _write(tmp_path, "--gpus", "4", "--fsdp")


def test_a_gpu_count_without_a_preset_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "box.py"), "--gpus", "3"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "--gpus must be one of [1, 2, 4, 8]" in proc.stderr


def test_rerunning_the_scripts_training_command_resumes(tmp_path: Path, data_dir: Path) -> None:
    import shlex

    text = _write(
        tmp_path,
        "--gpus",
        "1",
        "--data-dir",
        str(data_dir),
        "--",
        "model=tiny",
        "task=burgers1d",
        "trainer.max_steps=2",
        "trainer.batch_size=8",
        "data.eval_samples=2",
        "data.generate=true",
        "hardware.threads=1",
    )
    line = next(ln for ln in text.splitlines() if ln.startswith("nohup "))
    args = shlex.split(line.split(" > train.out")[0])[1:]
    assert "paths.output_dir=runs/box" in args
    args = [sys.executable if a == "python" else "hardware=cpu" if a == "hardware=gpu" else a for a in args]
    first = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "stage operator already finished; skipping" in again.stderr + again.stdout
    assert f"run directory: {tmp_path / 'runs' / 'box'}" in again.stdout
