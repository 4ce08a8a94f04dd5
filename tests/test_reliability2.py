"""Issue 19: nothing runs from a run directory, no silent data mixing, no lost ``best``, no
overwritten run, a batch that cannot fit is refused, a signal in the closing evaluation stops cleanly.

One short run is trained once per module; each test works on its own copy of it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from tests.conftest import compose_cfg
from ups.config import ConfigError
from ups.data.readers import DataFileError, TrajectoryFile
from ups.faults.reliability_scenarios import plant_trap
from ups.runner import run
from ups.training import signals
from ups.training.checkpoint import Checkpointer, CheckpointError, load_consolidated, pack, run_checkpoint, unpack
from ups.training.rng import rng_state, set_rng_state

STEPS = ["task=darcy2d", "trainer.steps_per_epoch=2", "trainer.eval_every=2"]


def _cfg(data_dir: Path, out: Path, *overrides: str):
    cfg = compose_cfg(
        [
            "model=tiny",
            "hardware=cpu",
            "hardware.threads=1",
            f"paths.data_dir={data_dir}",
            "data.generate=true",
            f"paths.output_dir={out}",
            "trainer.max_steps=4",
            "trainer.batch_size=4",
            "trainer.log_every=1",
            "data.eval_samples=2",
            *STEPS,
            *overrides,
        ]
    )
    for ds in cfg.task.datasets.values():
        ds.synth.n_samples = 16
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data directory, a finished 4-step run directory) shared by the module; copy before changing."""
    base = tmp_path_factory.mktemp("rel2")
    data, out = base / "data", base / "run"
    run(_cfg(data, out))
    return data, out


@pytest.fixture
def copy(trained, tmp_path: Path):
    """``copy(*overrides)``: a config resuming a private copy of the trained run (and its data)."""
    data, out = trained
    shutil.copytree(out, tmp_path / "run")
    shutil.copytree(data, tmp_path / "data", ignore=shutil.ignore_patterns(".ups_*"))

    def make(*overrides: str):
        return _cfg(tmp_path / "data", tmp_path / "run", *overrides)

    return make


def _train_steps(run_dir: Path) -> list[int]:
    return [
        json.loads(ln)["step"]
        for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(ln).get("kind") == "train"
    ]


def _evaluate_cfg(*overrides: str):
    with initialize_config_module(config_module="ups.conf", version_base="1.3"):
        return compose(config_name="evaluate", overrides=list(overrides))


# ---------------------------------------------------------------------------------------- 1: no code runs
class _Trap:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("checksums", ["recomputed", "deleted"])
def test_a_booby_trapped_checkpoint_runs_nothing_through_resume(copy, tmp_path: Path, checksums: str, caplog) -> None:
    marker = tmp_path / "PWNED"
    final = tmp_path / "run" / "checkpoints" / "operator" / "final"
    plant_trap(final, marker, keep_checksums=checksums == "recomputed")
    if checksums == "recomputed":  # it passes its checksums: the load itself refuses it
        with pytest.raises(CheckpointError, match=r"\.metadata is refused: it names posix.system"):
            run(copy("trainer.max_steps=6"))
    else:  # no checksums: skipped with a warning naming the option; the older step checkpoint is used
        with caplog.at_level(logging.WARNING, logger="ups.training.resume"):
            assert run(copy("trainer.max_steps=6"))["step"] == 6
        assert "has no checksums.json" in caplog.text and "trainer.allow_unverified_checkpoints=true" in caplog.text
    assert not marker.exists()


def test_a_booby_trapped_checkpoint_runs_nothing_through_ups_evaluate(copy, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    run_dir = tmp_path / "run"
    plant_trap(run_dir / "checkpoints" / "operator" / "final", marker, keep_checksums=True)
    out = subprocess.run(
        [sys.executable, "-m", "ups.evaluate", f"run={run_dir}", "checkpoint=final"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert ".metadata is refused" in out.stderr and "posix.system" in out.stderr
    from ups.evaluate import evaluate_run

    plant_trap(run_dir / "checkpoints" / "operator" / "final", marker, keep_checksums=False)
    with pytest.raises(CheckpointError, match="allow_unverified_checkpoints=true"):
        evaluate_run(_evaluate_cfg(f"run={run_dir}", "checkpoint=final"))
    with pytest.raises(CheckpointError, match=r"\.metadata is refused"):  # allowed unverified: still not run
        evaluate_run(_evaluate_cfg(f"run={run_dir}", "checkpoint=final", "allow_unverified_checkpoints=true"))
    assert not marker.exists()


def test_a_pickled_leaf_is_read_weights_only(tmp_path: Path) -> None:
    """A non-tensor leaf that would run code on load (what DCP's default planner unpickles) is refused."""
    marker = tmp_path / "PWNED"
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save({"model": {"w": torch.ones(3)}, "evil": _Trap(marker)}, "step_00000001", 1)
    with pytest.raises(CheckpointError, match="weights_only"):
        Checkpointer.load_into(tmp_path / "ck" / "step_00000001", {"evil": b""})
    with pytest.raises(CheckpointError, match="weights_only"):
        load_consolidated(tmp_path / "ck" / "step_00000001")
    assert not marker.exists()


def test_trainer_state_is_json_and_rng_round_trips() -> None:
    assert json.loads(pack({"a": [1, 2.5], "b": float("inf")})) == {"a": [1, 2.5], "b": float("inf")}
    with pytest.raises(CheckpointError, match="pickle"):
        unpack(__import__("pickle").dumps({"step": 1}))
    state = rng_state()
    first = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    set_rng_state(state)
    again = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]


# ------------------------------------------------------------------------------------------- 2, 3: data
def test_resume_on_other_data_is_refused_with_both_fingerprints(copy, tmp_path: Path, caplog) -> None:
    from ups.data.synth import generate

    (tmp_path / "other").mkdir()
    generate("darcy2d", tmp_path / "other", n_samples=16, seed=7)
    name = next(p.name for p in (tmp_path / "data").glob("2D_Darcy*"))
    shutil.copy(next((tmp_path / "other").glob("2D_Darcy*")), tmp_path / "data" / name)
    before = (tmp_path / "run" / "config.yaml").read_bytes()
    with pytest.raises(DataFileError, match="trainer.allow_data_change=true") as err:
        run(copy("trainer.max_steps=6"))
    assert str(err.value).count("sha256") == 2 and "checkpoint" in str(err.value) and "now" in str(err.value)
    assert (tmp_path / "run" / "config.yaml").read_bytes() == before
    with caplog.at_level(logging.WARNING, logger="ups.training.resume"):
        assert run(copy("trainer.max_steps=6", "trainer.allow_data_change=true"))["step"] == 6
    assert "differs from its checkpoint's" in caplog.text


def test_a_file_changed_under_a_reader_stops_it(trained, tmp_path: Path) -> None:
    from ups.data.registry import get_family

    src = next(trained[0].glob("2D_Darcy*"))
    shutil.copy(src, tmp_path / src.name)
    f = TrajectoryFile(tmp_path / src.name, get_family("darcy2d"))
    f.read(0)
    os.truncate(tmp_path / src.name, (tmp_path / src.name).stat().st_size // 2)
    with pytest.raises(DataFileError, match="changed while the run was reading it: its size went from"):
        f.read(1)
    with pytest.raises(DataFileError, match="changed"):
        list(f.read_many([0, 1], 1 << 20))


def test_a_duplicate_download_is_warned(trained, tmp_path: Path, caplog) -> None:
    from ups.data.registry import get_family
    from ups.data.validate import warn_duplicates

    src = next(trained[0].glob("2D_Darcy*"))
    dup = tmp_path / (src.stem + " (1)" + src.suffix)
    shutil.copy(src, dup)
    fam = get_family("darcy2d")
    with caplog.at_level(logging.WARNING, logger="ups.data.validate"):
        assert warn_duplicates("darcy2d", [TrajectoryFile(src, fam), TrajectoryFile(dup, fam)]) == [
            (src.name, dup.name)
        ]
    assert "count twice" in caplog.text


# ---------------------------------------------------------------------------------------------- 4: memory
def test_a_batch_that_cannot_fit_is_refused_before_the_first_step(copy, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot fit.*python -m ups.tune"):
        run(_cfg(tmp_path / "data", tmp_path / "big", "trainer.batch_size=1000000"))
    assert not (tmp_path / "big" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------------ 5: best
def test_best_survives_a_failed_copy(copy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.rmtree(tmp_path / "run")
    original, calls = Checkpointer.copy, []

    def full_disk(self, src, dst):
        calls.append(dst)
        (self.root / f".{dst}.tmp").mkdir()  # what a copytree cut short leaves
        (self.root / f".{dst}.tmp" / "COMPLETE").touch()
        raise OSError(28, f"No space left on device while writing {self.root / f'.{dst}.tmp'}")

    monkeypatch.setattr(Checkpointer, "copy", full_disk)
    with pytest.raises(OSError, match="No space left"):  # the copy of step 2 to best fails
        run(copy("trainer.max_steps=2"))
    monkeypatch.setattr(Checkpointer, "copy", original)
    root = tmp_path / "run" / "checkpoints" / "operator"
    with pytest.raises(FileNotFoundError) as err:
        run_checkpoint(tmp_path / "run", copy().stages, "best")
    assert ".best.tmp" not in str(err.value)  # a temporary folder is never listed as complete
    run(copy("trainer.max_steps=2"))  # resumes at step 2 and ends without another evaluation
    assert (root / "best" / "COMPLETE").exists() and not list(root.glob(".*"))
    assert json.loads((root / "best" / "meta.json").read_text())["step"] == 2


# -------------------------------------------------------------------------------------- 6, 7: the run directory
def test_a_refused_rerun_changes_nothing_and_names_the_settings(copy, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != "train.log"}
    with pytest.raises(ConfigError, match=r"another model or task.*model\..* -> .*paths.output_dir"):
        run(copy("model=small"))
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != "train.log"}
    assert after == before


def test_a_changed_setting_that_resume_accepts_is_warned(copy, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ups.training.resume"):
        run(copy("trainer.max_steps=6", "optim.lr=0.0005"))
    assert "settings that differ" in caplog.text and "optim.lr:" in caplog.text and "-> 0.0005" in caplog.text


def test_resume_false_is_refused_unless_overwrite_then_starts_clean(copy, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    final = (run_dir / "checkpoints" / "operator" / "final" / "checksums.json").read_bytes()
    with pytest.raises(ConfigError, match="trainer.overwrite=true"):
        run(copy("trainer.resume=false", "trainer.seed=5"))
    assert (run_dir / "checkpoints" / "operator" / "final" / "checksums.json").read_bytes() == final
    run(copy("trainer.resume=false", "trainer.seed=5", "trainer.overwrite=true"))
    assert _train_steps(run_dir) == [1, 2, 3, 4]  # one run's records, not two


# ------------------------------------------------------------------------------------- 8: closing evaluation
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_the_closing_evaluation_stops_it_and_the_rerun_only_evaluates(
    copy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sig: int
) -> None:
    import ups.runner

    shutil.rmtree(tmp_path / "run" / "eval")
    suite = ups.runner.evaluate_suite

    def signalled(*a, **k):
        os.kill(os.getpid(), sig)
        return suite(*a, **k)

    monkeypatch.setattr(ups.runner, "evaluate_suite", signalled)
    with pytest.raises(signals.Interrupted, match="during the closing evaluation") as err:
        run(copy())
    assert err.value.exit_code == 128 + sig and not (tmp_path / "run" / "eval" / "final_test.json").exists()
    monkeypatch.setattr(ups.runner, "evaluate_suite", suite)
    steps = _train_steps(tmp_path / "run")
    run(copy())
    assert _train_steps(tmp_path / "run") == steps  # nothing trained again
    assert (tmp_path / "run" / "eval" / "final_test.json").exists()


# ------------------------------------------------------------------------------------------- ups.evaluate
def test_ups_evaluate_messages(copy, tmp_path: Path) -> None:
    from ups.evaluate import evaluate_run

    run_dir = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="not a checkpoint name"):
        evaluate_run(_evaluate_cfg(f"run={run_dir}", "checkpoint=../../.."))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA"):
            evaluate_run(_evaluate_cfg(f"run={run_dir}", "device=cuda"))
    config = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(config.replace("model:", "model: [", 1))
    with pytest.raises(ConfigError, match="cannot be read"):
        evaluate_run(_evaluate_cfg(f"run={run_dir}", "checkpoint=final"))
    small = _cfg(tmp_path / "data", run_dir, "model=small")
    from omegaconf import OmegaConf

    OmegaConf.save(small, run_dir / "config.yaml", resolve=True)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        evaluate_run(_evaluate_cfg(f"run={run_dir}", "checkpoint=final"))
