"""Layout, naming, determinism and CLI tests of ups.data.synth (tiny sizes, a few seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ups.data.synth import GENERATORS, GROUPS, expand_tasks, generate
from ups.data.synth.__main__ import main
from ups.data.synth._common import produce

REPO = Path(__file__).resolve().parents[1]
N, NX, NT = 3, 8, 4

# family -> (file name, {dataset: shape}) for N samples, NX cells per axis, NT frames
A1 = {"x-coordinate": (NX,), "t-coordinate": (NT + 1,)}
A2 = {**A1, "y-coordinate": (NX,)}
A3 = {**A2, "z-coordinate": (NX,)}
LAYOUT_A = {
    "advection1d": ("1D_Advection_Sols_beta0.4.hdf5", {"tensor": (N, NT, NX), **A1}),
    "burgers1d": ("1D_Burgers_Sols_Nu0.1.hdf5", {"tensor": (N, NT, NX), **A1}),
    "diff_react1d": ("ReacDiff_Nu0.5_Rho1.0.hdf5", {"tensor": (N, NT, NX), **A1}),
    "cfd1d": (
        "1D_CFD_Rand_Eta0.1_Zeta0.1_periodic_Train.hdf5",
        {k: (N, NT, NX) for k in ("density", "pressure", "Vx")} | A1,
    ),
    "darcy2d": (
        "2D_DarcyFlow_beta1.0_Train.hdf5",
        {
            "tensor": (N, 1, NX, NX),
            "nu": (N, NX, NX),
            "x-coordinate": (NX,),
            "y-coordinate": (NX,),
            "t-coordinate": (10,),
        },
    ),
    "cfd2d": (
        "2D_CFD_Rand_M0.1_Eta0.1_Zeta0.1_periodic_128_Train.hdf5",
        {k: (N, NT, NX, NX) for k in ("density", "pressure", "Vx", "Vy")} | A2,
    ),
    "cfd3d": (
        "3D_CFD_Rand_M1.0_Eta1e-08_Zeta1e-08_periodic_Train.hdf5",
        {k: (N, NT, NX, NX, NX) for k in ("density", "pressure", "Vx", "Vy", "Vz")} | A3,
    ),
}
LAYOUT_B = {  # family -> (file name, data shape, grid keys)
    "diff_sorp1d": ("1D_diff-sorp_NA_NA.h5", (NT, NX, 1), {"x": (NX,), "t": (NT,)}),
    "react_diff2d": ("2D_diff-react_NA_NA.h5", (NT, NX, NX, 2), {"x": (NX,), "y": (NX,), "t": (NT,)}),
    "swe2d": ("2D_rdb_NA_NA.h5", (NT, NX, NX, 1), {"x": (NX,), "y": (NX,), "t": (NT,)}),
}
LAYOUT_C = {
    "ns_incom2d": (
        "ns_incom_inhom_2d_512-0.h5",
        {"velocity": (N, NT, NX, NX, 2), "particles": (N, NT, NX, NX, 1), "force": (N, NX, NX, 2), "t": (N, NT)},
    )
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """All eleven families generated once at tiny size: {family: [paths]}."""
    out = tmp_path_factory.mktemp("synth_tiny")
    return out, {fam: generate(fam, out, n_samples=N, nx=NX, nt=NT, seed=1) for fam in GENERATORS}


def test_registry_and_groups():
    assert len(GENERATORS) == 11
    assert set(GENERATORS) == set(LAYOUT_A) | set(LAYOUT_B) | set(LAYOUT_C)
    assert GROUPS["pdebench2"] == ["advection1d", "darcy2d"]
    assert expand_tasks("pdebench11") == list(GENERATORS)
    assert expand_tasks("darcy2d,pdebench2") == ["darcy2d", "advection1d"]
    with pytest.raises(ValueError, match="valid families: advection1d"):
        generate("advection", "/nonexistent")
    with pytest.raises(ValueError, match="unknown PDE family 'nope'"):
        expand_tasks("advection1d,nope")
    with pytest.raises(ValueError, match="nt must be an integer >= 2"):
        generate("burgers1d", "/nonexistent", nt=1)


def _all_datasets(f: h5py.File) -> dict:
    out = {}
    f.visititems(lambda k, obj: out.__setitem__(k, obj) if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize("family", sorted(GENERATORS))
def test_every_family_is_finite_float32(tiny, family):
    _, paths = tiny
    assert len(paths[family]) == 1
    with h5py.File(paths[family][0], "r") as f:
        dsets = _all_datasets(f)
        assert dsets
        for name, d in dsets.items():
            assert d.dtype == np.float32, (name, d.dtype)
            assert np.all(np.isfinite(d[()])), name


@pytest.mark.parametrize("family", sorted(LAYOUT_A))
def test_layout_a(tiny, family):
    _, paths = tiny
    name, spec = LAYOUT_A[family]
    assert paths[family][0].name == name
    with h5py.File(paths[family][0], "r") as f:
        assert {k: f[k].shape for k in f} == spec
        x = f["x-coordinate"][()]
        dx = x[1] - x[0]
        lo = -1.0 if family == "cfd1d" else 0.0
        np.testing.assert_allclose(x, lo + (np.arange(NX) + 0.5) * dx, atol=1e-6)  # cell centres
        if family != "darcy2d":
            t = f["t-coordinate"][()]
            assert t[0] == 0 and np.allclose(np.diff(t), t[1])


@pytest.mark.parametrize("family", sorted(LAYOUT_B))
def test_layout_b(tiny, family):
    _, paths = tiny
    name, shape, grid = LAYOUT_B[family]
    assert paths[family][0].name == name
    with h5py.File(paths[family][0], "r") as f:
        assert sorted(f) == [f"{i:04d}" for i in range(N)]
        for g in f.values():
            assert set(g) == {"data", "grid"}
            assert g["data"].shape == shape and g["data"].compression == (None if family == "swe2d" else "lzf")
            assert {k: g["grid"][k].shape for k in g["grid"]} == grid
            cfg = g.attrs["config"]
            assert isinstance(cfg, str) and cfg.startswith("sim:\n")
        if family == "swe2d":
            assert "dam_radius:" in f["0000"].attrs["config"]


def test_layout_c(tiny):
    _, paths = tiny
    name, spec = LAYOUT_C["ns_incom2d"]
    path = paths["ns_incom2d"][0]
    assert path.name == name
    with h5py.File(path, "r") as f:
        assert {k: f[k].shape for k in f} == spec
        assert set(f.attrs) == {"config", "latestIndex", "ups_synthetic"}  # the mark PDEBench ignores
        assert int(f.attrs["latestIndex"]) == NT - 1
        assert "NU: 0.01" in f.attrs["config"]


def test_swe_default_has_group_0023(tmp_path):
    with h5py.File(generate("swe2d", tmp_path, nx=8, nt=2)[0], "r") as f:
        assert "0023" in f and len(f) >= 24


def test_turb_and_extra_parameters_names(tmp_path):
    (p,) = generate("cfd2d", tmp_path, n_samples=1, nx=8, nt=2, variant="turb")
    assert p.name == "2D_CFD_Turb_M0.1_Eta1e-08_Zeta1e-08_periodic_512_Train.hdf5"
    (p,) = generate("cfd1d", tmp_path, n_samples=1, nx=16, nt=2, eta=1e-8, zeta=1e-8)
    assert p.name == "1D_CFD_Rand_Eta1.e-8_Zeta1.e-8_periodic_Train.hdf5"
    ps = generate("advection1d", tmp_path, n_samples=1, nx=8, nt=2, betas=[0.1, 4.0])
    assert [q.name for q in ps] == ["1D_Advection_Sols_beta0.1.hdf5", "1D_Advection_Sols_beta4.0.hdf5"]


def test_deterministic_in_seed(tmp_path):
    read = lambda p: h5py.File(p, "r")["tensor"][()]  # noqa: E731
    a = read(generate("burgers1d", tmp_path / "a", n_samples=2, nx=16, nt=3, seed=5)[0])
    b = read(generate("burgers1d", tmp_path / "b", n_samples=2, nx=16, nt=3, seed=5)[0])
    c = read(generate("burgers1d", tmp_path / "c", n_samples=2, nx=16, nt=3, seed=6)[0])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_rerun_skips_and_overwrite_rewrites(tmp_path):
    (p,) = generate("darcy2d", tmp_path, n_samples=2, nx=8)
    stamp = p.stat().st_mtime_ns
    os.utime(p, ns=(stamp - 10**9, stamp - 10**9))  # make a rewrite visible on any clock
    assert generate("darcy2d", tmp_path, n_samples=2, nx=8) == [p]
    assert p.stat().st_mtime_ns == stamp - 10**9
    generate("darcy2d", tmp_path, n_samples=2, nx=8, overwrite=True)
    assert p.stat().st_mtime_ns != stamp - 10**9
    assert not list(tmp_path.glob("*.tmp"))


def test_failed_write_leaves_no_file(tmp_path):
    def writer(f):
        f["partial"] = np.zeros(3, dtype=np.float32)
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        produce(tmp_path, [("x.hdf5", writer)])
    assert list(tmp_path.iterdir()) == []


def test_cli_pdebench2_and_rerun(tmp_path):
    cmd = [sys.executable, "-m", "ups.data.synth", "tasks=pdebench2", f"out={tmp_path}", "n_samples=2", "nx=16", "nt=3"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "advection1d" in r.stdout and "darcy2d" in r.stdout and "total" in r.stdout
    assert "tensor(2, 3, 16)" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "1D_Advection_Sols_beta0.4.hdf5",
        "2D_DarcyFlow_beta1.0_Train.hdf5",
    ]
    stamps = [p.stat().st_mtime_ns for p in sorted(tmp_path.iterdir())]
    assert main(["tasks=pdebench2", f"out={tmp_path}", "n_samples=2", "nx=16", "nt=3"]) == 0
    assert [p.stat().st_mtime_ns for p in sorted(tmp_path.iterdir())] == stamps


def test_cli_bad_family_exits_nonzero(tmp_path):
    cmd = [sys.executable, "-m", "ups.data.synth", "tasks=advection1d,bogus", f"out={tmp_path}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown PDE family 'bogus'" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["out=x"],
        ["tasks=pdebench2"],
        ["pdebench2"],
        ["tasks=pdebench2", "out=x", "nx=abc"],
        ["tasks=pdebench2", "out=x", "nx=0"],
        ["tasks=pdebench2", "out=x", "foo=1"],
        ["tasks=pdebench2", "out=x", "overwrite=maybe"],
        ["tasks=", "out=x"],
        ["tasks=pdebench2", "out=x", "nt=1"],
        ["tasks=pdebench2", "out=x", "nx=2"],
    ],
)
def test_cli_bad_arguments(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
