"""Readers, splits, statistics and datasets on generated PDEBench-layout files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from ups.data.datasets import MultiTaskDataset, TrajectoryDataset, WindowDataset, normalise, to_points
from ups.data.readers import DataFileError, TrajectoryFile
from ups.data.registry import FAMILIES, get_family
from ups.data.stats import compute_stats, load_or_compute_stats
from ups.data.synth import generate
from ups.data.tasks import split_indices


@pytest.fixture(scope="module")
def adv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("advection1d", tmp_path_factory.mktemp("adv"), n_samples=12, nx=64, nt=31)[0]


@pytest.fixture(scope="module")
def darcy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("darcy2d", tmp_path_factory.mktemp("darcy"), n_samples=6, nx=16)[0]


def test_tensor_reader_matches_h5py_with_strides(adv_file: Path) -> None:
    f = TrajectoryFile(adv_file, get_family("advection1d"), rr=2, rr_t=3, rb=2)
    with h5py.File(adv_file) as h:
        raw = h["tensor"][()]
        x = h["x-coordinate"][()]
    assert f.n_samples == 6 and f.n_steps == len(range(0, 31, 3)) and f.space == (32,)
    np.testing.assert_array_equal(f.read(1)[..., 0], raw[2, ::3, ::2])
    np.testing.assert_allclose(f.coords()[:, 0], x[::2])
    assert f.params == {"beta": 0.4}
    assert f.dt() == pytest.approx(3 * 2.0 / 30, rel=1e-5)


def test_darcy_reader_gives_coefficient_then_solution(darcy_file: Path) -> None:
    f = TrajectoryFile(darcy_file, get_family("darcy2d"), rr=2)
    with h5py.File(darcy_file) as h:
        u, a = h["tensor"][3, 0], h["nu"][3]
    traj = f.read(3)
    assert traj.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(traj[0, ..., 0], a[::2, ::2])
    np.testing.assert_array_equal(traj[1, ..., 0], u[::2, ::2])
    assert f.dt() == 0.0 and f.coords().shape == (8, 8, 2)


def test_max_samples_and_index_errors(adv_file: Path) -> None:
    f = TrajectoryFile(adv_file, get_family("advection1d"), max_samples=5)
    assert f.n_samples == 5
    with pytest.raises(IndexError):
        f.read(5)


def test_bad_files_name_file_and_key(tmp_path: Path) -> None:
    text = tmp_path / "1D_Advection_Sols_beta0.1.hdf5"
    text.write_text("not hdf5")
    with pytest.raises(DataFileError, match="not a readable HDF5"):
        TrajectoryFile(text, get_family("advection1d"))
    nokey = tmp_path / "1D_Advection_Sols_beta0.2.hdf5"
    with h5py.File(nokey, "w") as h:
        h["u"] = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(DataFileError, match=r"beta0\.2.*missing key 'tensor'"):
        TrajectoryFile(nokey, get_family("advection1d"))
    badshape = tmp_path / "1D_Advection_Sols_beta0.3.hdf5"
    with h5py.File(badshape, "w") as h:
        h["tensor"] = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(DataFileError, match="shape"):
        TrajectoryFile(badshape, get_family("advection1d"))


@pytest.mark.parametrize(
    "name,expected",
    [
        ("1D_Advection_Sols_beta0.1.hdf5", {"beta": 0.1}),
        ("ReacDiff_Nu0.5_Rho10.0.hdf5", {"nu": 0.5, "rho": 10.0}),
        ("1D_CFD_Rand_Eta1.e-8_Zeta1.e-8_periodic_Train.hdf5", {"eta": 1e-8, "zeta": 1e-8}),
        ("2D_CFD_Rand_M0.1_Eta1e-08_Zeta1e-08_periodic_512_Train.hdf5", {"M": 0.1, "eta": 1e-8, "zeta": 1e-8}),
        ("2D_DarcyFlow_beta100.0_Train.hdf5", {"beta": 100.0}),
    ],
)
def test_params_parsed_from_pdebench_names(name: str, expected: dict) -> None:
    family = next(f for f in FAMILIES.values() if set(k for k, _ in f.params) == set(expected))
    assert family.parse_params(name) == pytest.approx(expected)


def test_split_rule_follows_pdebench_test_split() -> None:
    single = split_indices(20, "tensor", 0.1, 0.1)
    assert single["test"] == [0, 1] and single["val"] == [18, 19] and single["train"] == list(range(2, 18))
    group = split_indices(20, "group", 0.1, 0.1)
    assert group["test"] == [18, 19] and group["val"] == [16, 17]
    # PDEBench's group loader trains on the first int(0.9 N) groups: for N not divisible by 10 the
    # test split is larger than int(0.1 N).
    for n, n_test in ((48, 5), (32, 4), (24, 3), (101, 11), (10, 1)):
        group = split_indices(n, "group", 0.1, 0.1)
        assert group["test"] == list(range(int(n * 0.9), n)) and len(group["test"]) == n_test
        single = split_indices(n, "tensor", 0.1, 0.1)
        assert single["test"] == list(range(int(n * 0.1)))
    tiny = split_indices(3, "tensor", 0.1, 0.1)
    assert all(len(v) == 1 for v in tiny.values())
    with pytest.raises(ValueError):
        split_indices(2, "tensor", 0.1, 0.1)


def test_stats_are_train_moments_and_cached(adv_file: Path, tmp_path: Path) -> None:
    f = TrajectoryFile(adv_file, get_family("advection1d"))
    ids = [(0, i) for i in range(2, 10)]
    stats = compute_stats([f], ids, steady=False)
    with h5py.File(adv_file) as h:
        data = h["tensor"][2:10]
    assert stats.in_mean[0] == pytest.approx(data.mean(), abs=1e-5)
    assert stats.in_std[0] == pytest.approx(data.std(), rel=1e-4)
    first = load_or_compute_stats("adv", [f], ids, False, [tmp_path])
    assert len(list((tmp_path / ".ups_stats").glob("adv-*.json"))) == 1
    assert load_or_compute_stats("adv", [f], ids, False, [tmp_path]) == first
    load_or_compute_stats("adv", [f], ids[:-1], False, [tmp_path])  # another split: new file, not reuse
    assert len(list((tmp_path / ".ups_stats").glob("adv-*.json"))) == 2


def test_windows_and_trajectories(tiny_cfg) -> None:
    from ups.runner import build_tasks

    cfg = tiny_cfg()
    tasks = build_tasks(cfg, Path(cfg.paths.output_dir))
    adv, darcy = tasks
    w = WindowDataset(adv, "train")
    assert len(w) == len(adv.splits["train"]) * (adv.n_steps - 10)
    item = w[adv.n_steps - 10 + 3]  # second trajectory, window starting at frame 3
    traj = normalise(adv, adv.files[0].read(adv.splits["train"][1][1]))
    np.testing.assert_allclose(item["x"].numpy(), to_points(traj[3:13]), rtol=1e-6)
    np.testing.assert_allclose(item["y"].numpy(), to_points(traj[13:14]), rtol=1e-6)
    assert item["cond"][1] == pytest.approx(np.log10(0.4))
    d = WindowDataset(darcy, "train")
    assert len(d) == len(darcy.splits["train"]) and d[0]["x"].shape == (darcy.coords.shape[0], 1)
    multi = MultiTaskDataset([w, d])
    batch = multi.collate([multi[(0, 0)], multi[(1, 2)], multi[(0, 5)]])
    assert [b["task"] for b in batch] == ["advection1d", "darcy2d"] and batch[0]["x"].shape[0] == 2
    assert batch[1]["coords"].shape == (1, darcy.coords.shape[0], 2)
    assert abs(float(darcy.coords.min())) <= 1 and float(darcy.coords.max()) <= 1
    tr = TrajectoryDataset(adv, "val")
    assert tr[0]["traj"].shape == (adv.n_steps, adv.coords.shape[0], 1)
