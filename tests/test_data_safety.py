"""A user's data is never written: no generation into a named directory, no replaced links or files,
synthetic files marked and reported, concurrent generation into one directory works."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import pytest

from tests.conftest import compose_cfg
from ups.data.readers import SYNTHETIC_ATTR, DataFileError
from ups.data.synth._common import atomic_h5
from ups.data.tasks import build_task, generation_allowed

ADV = "1D_Advection_Sols_beta0.4.hdf5"


def _build(data: Path, *overrides: str):
    cfg = compose_cfg(
        [
            "task=advection1d",
            f"paths.data_dir={data}",
            "paths.output_dir=o",
            "task.datasets.advection1d.synth.n_samples=8",
            *overrides,
        ]
    )
    name, ds = next(iter(cfg.task.datasets.items()))
    return build_task(name, ds, cfg.data, data, [data])


def test_generation_only_into_the_default_directory_unless_asked() -> None:
    assert generation_allowed(None, "data") and generation_allowed(None, "./data")
    assert not generation_allowed(None, "/data/pdebnech") and not generation_allowed(None, "other")
    assert generation_allowed(True, "/anywhere") and not generation_allowed(False, "data")


def test_a_mistyped_data_dir_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    typo = tmp_path / "pdebnech"
    with pytest.raises(FileNotFoundError, match="does not exist.*data.generate=true"):
        _build(typo)
    assert not typo.exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no files match"):
        _build(tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_a_broken_link_is_named_and_never_replaced(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / ADV).symlink_to(tmp_path / "unmounted" / ADV)
    with pytest.raises(DataFileError, match=f"{ADV}: a link whose target does not exist"):
        _build(data, "data.generate=true")
    assert (data / ADV).is_symlink() and not (data / ADV).exists()


def test_publishing_never_replaces_an_existing_file(tmp_path: Path) -> None:
    user = tmp_path / ADV
    user.write_bytes(b"the user's own file")
    with atomic_h5(user) as f:
        f["x"] = [1.0]
    assert user.read_bytes() == b"the user's own file"
    assert [p.name for p in tmp_path.iterdir()] == [ADV]  # no temporary file left behind


def test_generated_files_are_marked_and_reported(tmp_path: Path) -> None:
    task = _build(tmp_path / "gen", "data.generate=true")
    with h5py.File(tmp_path / "gen" / ADV) as f:
        assert SYNTHETIC_ATTR in f.attrs
    assert task.synthetic
    (tmp_path / "real").mkdir()
    shutil.copy(tmp_path / "gen" / ADV, tmp_path / "real" / ADV)
    with h5py.File(tmp_path / "real" / ADV, "a") as f:  # as a PDEBench download would be: no mark
        del f.attrs[SYNTHETIC_ATTR]
    assert not _build(tmp_path / "real").synthetic


def test_two_runs_generating_into_one_directory_at_once_both_succeed(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        from pathlib import Path
        from tests.conftest import compose_cfg
        from ups.data.tasks import build_task
        data = Path({str(tmp_path / "data")!r})
        cfg = compose_cfg(["task=advection1d", f"paths.data_dir={{data}}", "paths.output_dir=o",
                           "data.generate=true", "task.datasets.advection1d.synth.n_samples=8"])
        name, ds = next(iter(cfg.task.datasets.items()))
        print(len(build_task(name, ds, cfg.data, data, [data]).splits["train"]))
    """)
    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert outs[0][0] == outs[1][0]
    files = sorted(p.name for p in (tmp_path / "data").iterdir() if not p.name.startswith("."))
    assert files == [ADV]  # one published file, no temporary ones


def test_data_errors_reach_the_user_in_one_paragraph_with_the_traceback_in_the_log(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "pdebench.tar"
    not_a_dir.write_bytes(b"")
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "ups.train", f"paths.data_dir={not_a_dir}", f"paths.output_dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"Data error: task advection1d: paths.data_dir={not_a_dir} is a file" in proc.stderr
    assert "Traceback" in (run_dir / "train.log").read_text()
