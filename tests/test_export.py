"""One finished run: its provenance, its own leaderboard row (``leaderboard.path``), and its export,
which ``ups.evaluate`` scores to the run's exact test numbers and which loads without unpickling."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

import ups
from ups.evaluate import evaluate_run
from ups.export import export_run
from ups.exported import ExportError, load_export
from ups.runner import run


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, Path]:
    from tests.conftest import compose_cfg

    tmp = tmp_path_factory.mktemp("export")
    cfg = compose_cfg(
        [
            "model=tiny",
            "hardware=cpu",
            f"paths.data_dir={data_dir}",
            "data.generate=true",
            f"paths.output_dir={tmp / 'run'}",
            "trainer.max_steps=4",
            "trainer.batch_size=8",
            "data.eval_samples=2",
            "task=burgers1d",
            f"leaderboard.path={tmp / 'board'}",
        ]
    )
    for ds in cfg.task.datasets.values():
        ds.synth.n_samples = 16
    return Path(run(cfg)["run_dir"]), tmp / "board"


def test_a_run_records_its_provenance_and_appends_its_row(finished) -> None:
    run_dir, board = finished
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["versions"]["torch"] and prov["versions"]["numpy"] and prov["versions"]["h5py"]
    assert prov["seed"] == 0 and prov["world_size"] == 1 and set(prov) >= {"commit", "dirty", "data"}
    assert (
        list(prov["data"]) == ["burgers1d/1D_Burgers_Sols_Nu0.1.hdf5"]
        and "sha256" in prov["data"]["burgers1d/1D_Burgers_Sols_Nu0.1.hdf5"]
    )
    row = json.loads((board / "rows.jsonl").read_text())
    assert row["status"] == "ranked" and row["steps"] == 4 and row["run"] == str(run_dir.resolve())
    assert "| 1 | LatentSurrogate" in (board / "leaderboard.md").read_text()


def _evaluate(run_dir: Path) -> None:
    with initialize_config_module(config_module="ups.conf", version_base="1.3"):
        evaluate_run(compose(config_name="evaluate", overrides=[f"run={run_dir}", "device=cpu"]))


class _Trap:
    """A pickle that, if ever unpickled, leaves a file behind."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_an_export_reproduces_the_test_numbers_and_never_unpickles(finished, tmp_path: Path, monkeypatch) -> None:
    run_dir, _ = finished
    out = export_run(run_dir, "final", tmp_path / "shared")
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors",
        "config.yaml",
        "export.json",
        "eval",
        "provenance.json",
    }
    marker = tmp_path / "PWNED"
    for name in ("model.pt", "evil.pkl", "eval/final_test.pkl"):
        (out / name).write_bytes(pickle.dumps(_Trap(marker)))

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was read")

    for target in ("pickle.load", "pickle.loads", "pickle.Unpickler", "torch.load"):
        monkeypatch.setattr(target, refuse)
    model = ups.load_model(out)
    assert isinstance(model, torch.nn.Module) and not model.training
    _evaluate(out)
    assert not marker.exists()
    at_end = json.loads((run_dir / "eval" / "final_test.json").read_text())["results"]
    again = json.loads((out / "eval" / "export_test.json").read_text())["results"]
    assert again == at_end  # exactly: the same weights through the same evaluation


def test_a_damaged_export_is_refused_by_name(finished, tmp_path: Path) -> None:
    out = export_run(finished[0], "best", tmp_path / "best")
    assert json.loads((out / "export.json").read_text())["checkpoint"].endswith("operator/best")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ExportError, match="does not match the sha256"):
        load_export(out)


def test_the_command_line_names_a_bad_run_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ups.export", f"run={tmp_path / 'nope'}"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "no config.yaml" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ups.export", "ckpt=best"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "run= is required" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ups.export", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m ups.export run=")
