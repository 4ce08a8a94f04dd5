"""Bad input fails at dataset construction with the file and key named; caches go stale correctly.

Every broken file here is a real file on disk: a good synthetic file copied, then truncated,
overwritten or rewritten with h5py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import ups.data.stats as stats_mod
import ups.data.validate as validate_mod
from tests.conftest import compose_cfg
from ups.config import ConfigError
from ups.data.readers import DataFileError, TrajectoryFile
from ups.data.registry import get_family
from ups.data.stats import load_or_compute_stats
from ups.data.synth import generate
from ups.data.tasks import build_task

SIZES = {
    "advection1d": dict(n_samples=8, nx=32, nt=56),
    "diff_sorp1d": dict(n_samples=8, nx=16, nt=14),
    "cfd1d": dict(n_samples=4, nx=64, nt=56),
    "ns_incom2d": dict(n_samples=4, nx=8, nt=120),
}
ADV = "1D_Advection_Sols_beta0.4.hdf5"
SORP = "1D_diff-sorp_NA_NA.h5"


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of good files, copied by each test before it breaks them."""
    d = tmp_path_factory.mktemp("good")
    for family, sizes in SIZES.items():
        generate(family, d, **sizes)
    return d


def fresh(good: Path, tmp_path: Path, name: str) -> Path:
    """A private copy of one good file in an otherwise empty data directory."""
    (tmp_path / "data").mkdir(exist_ok=True)
    return Path(shutil.copy(good / name, tmp_path / "data" / name))


def build(tmp_path: Path, task: str = "advection1d", *overrides: str):
    """build_task for the task's single dataset, reading (and caching into) tmp_path/data."""
    data = tmp_path / "data"
    cfg = compose_cfg(
        [f"task={task}", f"paths.data_dir={data}", "paths.output_dir=o", "data.generate=false", *overrides]
    )
    name, ds = next(iter(cfg.task.datasets.items()))
    return build_task(name, ds, cfg.data, data, [data])


def test_truncated_file_is_named(good: Path, tmp_path: Path) -> None:
    for name in (ADV, SORP):
        path = fresh(good, tmp_path, name)
        os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(DataFileError, match=rf"{ADV}: not a readable HDF5 file: truncated"):
        build(tmp_path)
    with pytest.raises(DataFileError, match=rf"{SORP}: not a readable HDF5 file: truncated"):
        build(tmp_path, "diff_sorp1d")


def flip_middle(path: Path, n: int, value: int | None = None, mid: int | None = None) -> None:
    """Overwrite n bytes from ``mid`` (default: the middle of the file) with ``value``, or inverted."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2 if mid is None else mid
    data[mid : mid + n] = bytes(value if value is not None else b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def test_corrupt_compressed_chunk_is_found_by_the_scan(good: Path, tmp_path: Path) -> None:
    path = fresh(good, tmp_path, SORP)
    with h5py.File(path) as f:  # the middle of sample 3's lzf chunk: neither first nor last sample
        chunk = f["0003/data"].id.get_chunk_info(0)
    flip_middle(path, 16, mid=chunk.byte_offset + chunk.size // 2)
    with pytest.raises(DataFileError, match=rf"{SORP}: sample 3 \(group '0003'\) cannot be read"):
        build(tmp_path, "diff_sorp1d")


def test_every_run_probe_reads_the_ends_of_the_data(good: Path, tmp_path: Path) -> None:
    path = fresh(good, tmp_path, SORP)
    with h5py.File(path) as f:
        chunk = f["0007/data"].id.get_chunk_info(0)
    reader = TrajectoryFile(path, get_family("diff_sorp1d"))
    flip_middle(path, 16, mid=chunk.byte_offset + chunk.size // 2)
    with pytest.raises(DataFileError, match=rf"{SORP}: key '0007/data' of sample 7 \(group '0007'\) cannot be read"):
        validate_mod.probe_ends(reader)


def test_corrupt_uncompressed_bytes_surface_as_nan(good: Path, tmp_path: Path) -> None:
    # 0xFF bytes are a NaN pattern; without checksums in PDEBench files, that is how it shows
    flip_middle(fresh(good, tmp_path, ADV), 4096, 0xFF)
    with pytest.raises(DataFileError, match=rf"{ADV}: sample \d+ frame \d+ \(key 'tensor'.*NaN/Inf"):
        build(tmp_path)


def test_not_hdf5(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ADV).write_text("<html>404 Not Found</html>")
    with pytest.raises(DataFileError, match=rf"{ADV}: not a readable HDF5 file"):
        build(tmp_path)


def rewrite(path: Path, edit) -> None:
    with h5py.File(path, "r+") as f:
        edit(f)


@pytest.mark.parametrize(
    "task,name,edit,needle",
    [
        (
            "cfd1d",
            "1D_CFD_Rand_Eta0.1_Zeta0.1_periodic_Train.hdf5",
            lambda f: f.__delitem__("Vx"),
            r"missing key 'Vx' in the file root",
        ),
        ("advection1d", ADV, lambda f: f.__delitem__("t-coordinate"), r"missing key 't-coordinate'"),
        ("ns_incom2d", "ns_incom_inhom_2d_512-0.h5", lambda f: f.__delitem__("particles"), r"missing key 'particles'"),
        ("ns_incom2d", "ns_incom_inhom_2d_512-0.h5", lambda f: f.__delitem__("t"), r"missing key 't'"),
        ("diff_sorp1d", SORP, lambda f: f["0000"].__delitem__("data"), r"missing key 'data' in /0000"),
        ("diff_sorp1d", SORP, lambda f: [f.__delitem__(k) for k in list(f)], r"no sample groups"),
    ],
    ids=["cfd-field", "t-coordinate", "ns-particles", "ns-t", "group-data", "no-groups"],
)
def test_missing_keys_and_groups_are_named(good: Path, tmp_path: Path, task, name, edit, needle) -> None:
    rewrite(fresh(good, tmp_path, name), edit)
    with pytest.raises(DataFileError, match=rf"{name}: {needle}"):
        build(tmp_path, task)


def _replace(f: h5py.File, key: str, value: np.ndarray) -> None:
    del f[key]
    f[key] = value


@pytest.mark.parametrize(
    "task,name,edit,needle",
    [
        (
            "advection1d",
            ADV,
            lambda f: _replace(f, "tensor", np.zeros((8, 56, 4, 4), np.float32)),
            r"'tensor' has shape \(8, 56, 4, 4\) \(4 axes\); advection1d needs 3 axes",
        ),
        (
            "cfd1d",
            "1D_CFD_Rand_Eta0.1_Zeta0.1_periodic_Train.hdf5",
            lambda f: _replace(f, "pressure", np.zeros((4, 55, 64), np.float32)),
            r"'pressure' has shape \(4, 55, 64\), but '\w+' has \(\d+, \d+, \d+\)",
        ),
        (
            "advection1d",
            ADV,
            lambda f: _replace(f, "x-coordinate", np.zeros(31, np.float32)),
            r"x-coordinate has 31 values",
        ),
        (
            "advection1d",
            ADV,
            lambda f: _replace(f, "t-coordinate", np.zeros(10, np.float32)),
            r"'t-coordinate' has 10 values",
        ),
        (
            "diff_sorp1d",
            SORP,
            lambda f: _replace(f["0000"], "data", np.zeros((14, 16, 2), np.float32)),
            r"has 2 channels",
        ),
        (
            "diff_sorp1d",
            SORP,
            lambda f: _replace(f["0000"], "data", np.zeros((14, 16, 4, 1), np.float32)),
            r"expected \(T, 1 spatial axes, C\)",
        ),
        (
            "diff_sorp1d",
            SORP,
            lambda f: _replace(f["0005"], "data", np.zeros((13, 16, 1), np.float32)),
            r"sample 5 \(group '0005'\) reads as shape",
        ),
        (
            "ns_incom2d",
            "ns_incom_inhom_2d_512-0.h5",
            lambda f: _replace(f, "velocity", np.zeros((4, 120, 8, 8, 3), np.float32)),
            r"give 4 channels",
        ),
    ],
    ids=["ndim", "cfd-mismatch", "x-coordinate", "t-coordinate", "channels", "group-ndim", "group-in-middle", "ns"],
)
def test_wrong_shapes_are_named(good: Path, tmp_path: Path, task, name, edit, needle) -> None:
    rewrite(fresh(good, tmp_path, name), edit)
    with pytest.raises(DataFileError, match=rf"{name}: .*{needle}"):
        build(tmp_path, task)


def test_initial_step_must_leave_frames_to_predict(good: Path, tmp_path: Path) -> None:
    fresh(good, tmp_path, ADV)  # 56 stored frames -> 12 after reduced_resolution_t=5
    with pytest.raises(DataFileError, match="12 time steps after reduced_resolution_t=5 leave nothing to predict"):
        build(tmp_path, "advection1d", "task.datasets.advection1d.initial_step=12")


def put_nan(path: Path, sample: int, frame: int, value: float = np.nan) -> None:
    with h5py.File(path, "r+") as f:
        f["tensor"][sample, frame, 0] = value


def test_nonfinite_is_an_error_naming_file_sample_frame(good: Path, tmp_path: Path) -> None:
    put_nan(fresh(good, tmp_path, ADV), 3, 20, np.inf)  # frame 20 survives reduced_resolution_t=5
    with pytest.raises(
        DataFileError,
        match=rf"{ADV}: sample 3 frame 20 \(key 'tensor'.*NaN/Inf.*1 of 8.*"
        r"data.nonfinite=skip",
    ):
        build(tmp_path)


def test_nonfinite_skip_leaves_samples_out_with_a_warning(good: Path, tmp_path: Path, caplog) -> None:
    path = fresh(good, tmp_path, ADV)
    put_nan(path, 3, 20)
    put_nan(path, 6, 0)
    put_nan(path, 5, 21)  # a frame the time stride never reads: not this run's concern
    with caplog.at_level(logging.WARNING):
        task = build(tmp_path, "advection1d", "data.nonfinite=skip")
    assert task.skipped == [(0, 3), (0, 6)]
    ids = [i for split in task.splits.values() for _, i in split]
    assert sorted(ids) == [0, 1, 2, 4, 5, 7]
    assert task.splits["test"] == [(0, 0)]  # skipping moves no sample between splits
    assert any("skipped 2 of 8 samples" in r.getMessage() for r in caplog.records)
    assert np.isfinite(task.stats.arrays()[0]).all()


def test_nonfinite_scan_is_cached_until_the_file_changes(good: Path, tmp_path: Path, monkeypatch) -> None:
    path = fresh(good, tmp_path, ADV)
    calls = []
    real_scan = validate_mod.scan_file
    monkeypatch.setattr(validate_mod, "scan_file", lambda f: calls.append(f.path.name) or real_scan(f))
    build(tmp_path)
    build(tmp_path)
    assert calls == [ADV], "the second run reads the cached scan"
    put_nan(path, 2, 10)  # rewriting the file changes its size or mtime: scanned again
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DataFileError, match="sample 2 frame 10"):
        build(tmp_path)
    assert calls == [ADV, ADV]
    # data.generate=false: the data directory is only read, the scan is cached in UPS_CACHE_DIR (conftest.py)
    for cache in (Path(os.environ["UPS_CACHE_DIR"]) / ".ups_stats").glob(f"scan-{Path(ADV).stem}-*.json"):
        cache.write_text("{not json")
    with pytest.raises(DataFileError, match="sample 2 frame 10"):  # unreadable cache: scan again
        build(tmp_path)
    assert len(calls) == 3


def test_bad_nonfinite_policy_is_a_config_error(good: Path, tmp_path: Path) -> None:
    fresh(good, tmp_path, ADV)
    with pytest.raises(ConfigError, match="data.nonfinite='ignore'"):
        build(tmp_path, "advection1d", "data.nonfinite=ignore")


@pytest.mark.parametrize(
    "task,command",
    [
        ("advection1d", "python -m ups.data.synth tasks=advection1d out={d} n_samples=64 nx=256 nt=201"),
        ("ns2d_turb", "generate('cfd2d', '{d}', n_samples=32, nx=48, nt=21, variant='turb')"),
    ],
)
def test_absent_files_say_how_to_generate_or_point_at_data(tmp_path: Path, task: str, command: str) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        build(tmp_path, task)
    msg = str(err.value)
    assert command.format(d=tmp_path / "data") in msg and "paths.data_dir" in msg and "data.generate=true" in msg


def _adv(good: Path, tmp_path: Path) -> tuple[list[TrajectoryFile], list[tuple[int, int]], Path]:
    path = fresh(good, tmp_path, ADV)
    return [TrajectoryFile(path, get_family("advection1d"), 4, 5)], [(0, i) for i in range(1, 7)], tmp_path / "s"


def counting(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = stats_mod.compute_stats
    monkeypatch.setattr(stats_mod, "compute_stats", lambda *a: calls.append(1) or real(*a))
    return calls


def test_stats_recomputed_when_the_file_is_touched_or_rewritten(good: Path, tmp_path: Path, monkeypatch) -> None:
    files, ids, store = _adv(good, tmp_path)
    calls = counting(monkeypatch)
    first = load_or_compute_stats("adv", files, ids, False, [store])
    assert load_or_compute_stats("adv", files, ids, False, [store]) == first and len(calls) == 1
    st = files[0].path.stat()
    os.utime(files[0].path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes, new mtime
    files[0].close()  # an open reader refuses a file changed under it (readers.py: check_unchanged)
    assert load_or_compute_stats("adv", files, ids, False, [store]) == first and len(calls) == 2
    files[0].close()  # HDF5 refuses to open a file for writing while a read handle is open
    with h5py.File(files[0].path, "r+") as f:  # rewritten with other values
        f["tensor"][...] = 2 * f["tensor"][()] + 1
    again = load_or_compute_stats("adv", files, ids, False, [store])
    assert len(calls) == 3 and again.in_mean[0] == pytest.approx(2 * first.in_mean[0] + 1, abs=1e-4)
    assert len(list((store / ".ups_stats").glob("adv-*.json"))) == 3


@pytest.mark.parametrize(
    "content",
    [
        '{"in_mean": [0.1',
        "[]",
        json.dumps({"in_mean": [0.0]}),
        json.dumps({"in_mean": [0.0], "in_std": [0.0], "out_mean": [0.0], "out_std": [1.0]}),
        json.dumps({"in_mean": [0.0, 1.0], "in_std": [1.0, 1.0], "out_mean": [0.0, 1.0], "out_std": [1.0, 1.0]}),
    ],
    ids=["truncated-json", "not-a-dict", "missing-keys", "zero-std", "wrong-channels"],
)
def test_corrupt_stats_are_recomputed_with_a_warning(
    good: Path, tmp_path: Path, monkeypatch, caplog, content: str
) -> None:
    files, ids, store = _adv(good, tmp_path)
    good_stats = load_or_compute_stats("adv", files, ids, False, [store])
    (stored,) = (store / ".ups_stats").glob("adv-*.json")
    stored.write_text(content)
    calls = counting(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="ups.data.stats"):
        assert load_or_compute_stats("adv", files, ids, False, [store]) == good_stats
    assert len(calls) == 1 and "corrupt normalisation statistics" in caplog.text
    assert json.loads(stored.read_text()) == json.loads(json.dumps(good_stats.__dict__))  # repaired


def test_statistics_are_never_defaulted(good: Path, tmp_path: Path) -> None:
    files, _, store = _adv(good, tmp_path)
    with pytest.raises(ValueError, match="empty training split"):
        load_or_compute_stats("adv", files, [], False, [store])
    files[0].close()
    put_nan(files[0].path, 1, 0)
    with pytest.raises(DataFileError, match="statistics .* unusable"):
        load_or_compute_stats("adv", files, [(0, 1)], False, [store])
    assert not list(store.glob(".ups_stats/*.json"))
