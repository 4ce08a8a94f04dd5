"""The eleven task files, the pdebench11 group and the aliases: config, files and built data."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_cfg
from ups.data.datasets import TrajectoryDataset, WindowDataset
from ups.data.readers import TrajectoryFile
from ups.data.registry import COND_PARAMS, FAMILIES, get_family
from ups.data.synth import generate
from ups.data.synth.__main__ import config_sizes
from ups.data.tasks import build_task, find_files, log_task_note

FAMILY_NAMES = list(FAMILIES)
# PDEBench's defaults (spec section 3): (reduced_resolution, reduced_resolution_t, initial_step);
# ns_incom2d has no PDEBench config and is the documented choice in its task file.
PDEBENCH = {
    "advection1d": (4, 5, 10),
    "burgers1d": (4, 5, 10),
    "diff_react1d": (4, 1, 5),
    "diff_sorp1d": (1, 1, 10),
    "cfd1d": (8, 5, 10),
    "darcy2d": (2, 1, 1),
    "react_diff2d": (1, 1, 10),
    "swe2d": (1, 1, 10),
    "cfd2d": (2, 1, 10),
    "ns_incom2d": (4, 10, 10),
    "cfd3d": (2, 1, 10),
}
# Grid points per axis after striding, per dimension, that CPU training can afford.
AFFORDABLE = {1: (32, 64), 2: (16, 32), 3: (8, 8)}
# Tiny sizes for building every family here: 2 windows per trajectory after PDEBench's strides.
TINY = {
    "advection1d": (32, 56),
    "burgers1d": (32, 56),
    "diff_react1d": (32, 7),
    "diff_sorp1d": (16, 12),
    "cfd1d": (64, 56),
    "darcy2d": (16, None),
    "react_diff2d": (8, 12),
    "swe2d": (8, 12),
    "cfd2d": (16, 12),
    "ns_incom2d": (16, 120),
    "cfd3d": (8, 12),
}
ALIASES = {
    "comp_ns2d": "cfd2d",
    "ns2d_cond": "ns_incom2d",
    "diff_sorp2d": "diff_sorp1d",
    "shallow_water2d_varied": "swe2d",
    "ns2d_turb": "cfd2d",
}


def cfg_for(task: str, data_dir: Path | str = "d"):
    return compose_cfg([f"task={task}", f"paths.data_dir={data_dir}", "paths.output_dir=o", "data.generate=true"])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_task_file_uses_pdebench_defaults_and_affordable_sizes(family: str) -> None:
    ds = cfg_for(family).task.datasets[family]
    assert ds.family == family
    assert (ds.reduced_resolution, ds.reduced_resolution_t, ds.initial_step) == PDEBENCH[family]
    s, dim = ds.synth, FAMILIES[family].dim
    lo, hi = AFFORDABLE[dim]
    assert lo <= len(range(0, s.nx, ds.reduced_resolution)) <= hi
    if not FAMILIES[family].steady:
        frames = len(range(0, s.nt, ds.reduced_resolution_t))
        assert frames - ds.initial_step >= 3, "at least 3 windows per trajectory"
    options = OmegaConf.to_container(s.options) if s.get("options") else {}
    assert config_sizes(family) == {"n_samples": s.n_samples, "nx": s.nx, **({"nt": s.nt} if s.nt else {}), **options}


def test_pdebench11_holds_all_eleven_families() -> None:
    task = cfg_for("pdebench11").task
    assert task.name == "pdebench11" and task.note is None
    assert [ds.family for ds in task.datasets.values()] == FAMILY_NAMES
    assert list(task.datasets) == FAMILY_NAMES


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny11")


def tiny_cfg(task: str, data_dir: Path):
    cfg = cfg_for(task, data_dir)
    for ds in cfg.task.datasets.values():
        nx, nt = TINY[ds.family]
        ds.synth.n_samples, ds.synth.nx, ds.synth.nt = 4, nx, nt
    return cfg


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_builds_task_data_and_windows(family: str, tiny_dir: Path) -> None:
    cfg = tiny_cfg(family, tiny_dir)
    ds = cfg.task.datasets[family]
    fam = get_family(family)
    task = build_task(family, ds, cfg.data, tiny_dir, [tiny_dir])
    assert all(fnmatch_any(f.path.name, list(ds.files)) for f in task.files)
    nx, nt = TINY[family]
    space = (len(range(0, nx, ds.reduced_resolution)),) * fam.dim
    steps = 2 if fam.steady else len(range(0, nt, ds.reduced_resolution_t))
    assert task.files[0].space == space and task.n_steps == steps
    assert task.channels == len(fam.channels) and task.family.dim == fam.dim
    assert task.coords.shape == (int(np.prod(space)), fam.dim)
    assert task.coords.min() >= -1 and task.coords.max() <= 1
    assert sum(len(v) for v in task.splits.values()) == 4 and all(task.splits.values())
    assert task.stats.problem(task.channels) is None
    cond = task.cond(0)
    params = [np.log10(v) for v in task.files[0].params.values()]
    assert cond.shape == (1 + COND_PARAMS,) and [k for k, _ in fam.params] == list(task.files[0].params)
    np.testing.assert_allclose(cond[1 : 1 + len(params)], params, rtol=1e-6)
    assert not cond[1 + len(params) :].any()
    assert cond[0] == (0.0 if fam.steady else pytest.approx(np.log10(task.files[0].dt())))
    windows = WindowDataset(task, "train")
    k = task.initial_step
    assert len(windows) == len(task.splits["train"]) * (steps - k)
    item = windows[len(windows) - 1]
    assert item["x"].shape == (task.coords.shape[0], k * task.channels)
    assert item["y"].shape == (task.coords.shape[0], task.channels)
    assert np.isfinite(item["x"].numpy()).all() and np.isfinite(item["y"].numpy()).all()
    traj = TrajectoryDataset(task, "test")[0]["traj"]
    assert traj.shape == (steps, task.coords.shape[0], task.channels)


def fnmatch_any(name: str, patterns: list[str]) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(name, p) for p in patterns)


def test_group_layout_without_y_grid_reads_like_h5py(tmp_path: Path) -> None:
    path = generate("diff_sorp1d", tmp_path, n_samples=5, nx=16, nt=12)[0]
    f = TrajectoryFile(path, get_family("diff_sorp1d"), rr=2, rr_t=3, rb=2)
    with h5py.File(path) as h:
        assert "y" not in h["0000/grid"]
        data, x, t = h["0004/data"][()], h["0000/grid/x"][()], h["0000/grid/t"][()]
    assert f.n_samples == 3 and f.space == (8,) and f.n_steps == 4
    np.testing.assert_array_equal(f.read(2), data[::3, ::2])
    np.testing.assert_allclose(f.coords()[:, 0], x[::2])
    assert f.dt() == pytest.approx(3 * (t[1] - t[0]))


def test_ns_incom_is_batch_first_and_split_across_files(tmp_path: Path) -> None:
    src = generate("ns_incom2d", tmp_path, n_samples=3, nx=8, nt=6)[0]
    for k in (2, 10):  # natural order: -0, -2, -10 (not -0, -10, -2)
        shutil.copy(src, tmp_path / f"ns_incom_inhom_2d_512-{k}.h5")
    fam = get_family("ns_incom2d")
    f = TrajectoryFile(src, fam, rr=2, rr_t=2, rb=1)
    with h5py.File(src) as h:
        vel, smoke, t = h["velocity"][()], h["particles"][()], h["t"][()]
    assert f.n_samples == 3 and f.space == (4, 4) and f.n_steps == 3
    want = np.concatenate([vel[1], smoke[1]], axis=-1)[::2, ::2, ::2]
    np.testing.assert_array_equal(f.read(1), want)
    assert f.dt() == pytest.approx(2 * (t[0, 1] - t[0, 0]))
    assert TrajectoryFile(src, fam, rb=2).n_samples == 2
    cfg = cfg_for("ns_incom2d", tmp_path)
    ds = cfg.task.datasets.ns_incom2d
    ds.reduced_resolution, ds.reduced_resolution_t, ds.initial_step = 2, 1, 3
    task = build_task("ns_incom2d", ds, cfg.data, tmp_path, [tmp_path])
    assert [p.path.name.split("-")[-1] for p in task.files] == ["0.h5", "2.h5", "10.h5"]
    # 9 samples = 3 files x batch 3, split as one sequence: test last, validation before it
    assert task.splits == {
        "train": [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)],
        "val": [(2, 1)],
        "test": [(2, 2)],
    }


@pytest.mark.parametrize("alias,family", list(ALIASES.items()))
def test_alias_composes_and_notes_what_it_stands_for(alias: str, family: str, caplog) -> None:
    task = cfg_for(alias).task
    assert task.name == alias and [ds.family for ds in task.datasets.values()] == [family]
    assert alias in task.note and "\n" not in task.note
    with caplog.at_level(logging.WARNING, logger="ups.data.tasks"):
        assert log_task_note(task) == task.note
        assert log_task_note(task, is_main=False) == task.note  # other ranks stay quiet
    assert [r.getMessage() for r in caplog.records] == [task.note]
    if alias == "diff_sorp2d":
        assert "1D only" in task.note


def test_ns2d_turb_generates_the_turb_variant(tmp_path: Path) -> None:
    cfg = cfg_for("ns2d_turb", tmp_path)
    ds = cfg.task.datasets.cfd2d_turb
    assert ds.synth.options == {"variant": "turb"}
    ds.synth.n_samples, ds.synth.nx = 4, 16
    task = build_task("cfd2d_turb", ds, cfg.data, tmp_path, [tmp_path])
    assert [f.path.name for f in task.files] == ["2D_CFD_Turb_M0.1_Eta1e-08_Zeta1e-08_periodic_512_Train.hdf5"]
    assert find_files(tmp_path, ["2D_CFD_Rand_*"]) == []
    assert task.files[0].params == pytest.approx({"M": 0.1, "eta": 1e-8, "zeta": 1e-8})


def test_alias_on_the_command_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ups.train", "task=comp_ns2d", "--cfg", "job"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "name: comp_ns2d" in proc.stdout and "family: cfd2d" in proc.stdout and "note:" in proc.stdout
