"""Reads: lazy windows fetch only their frames, a split that fits is read in one pass, and every
way of reading gives the arrays a whole-file h5py read gives; the read benchmark runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.conftest import compose_cfg
from ups.bench import reads as bench
from ups.data import datasets
from ups.data.datasets import TrajectoryDataset, WindowDataset, normalise, to_points
from ups.data.readers import DataFileError, TrajectoryFile
from ups.data.synth import generate
from ups.data.tasks import TaskData, build_task

# family: (n_samples, nx, nt, reduced_batch), tiny files with the task's own strides
CASES = {
    "advection1d": (12, 32, 56, 2),  # single file, rr 4, rr_t 5, every 2nd sample
    "cfd1d": (8, 64, 56, 1),  # single file, three fields stacked as channels
    "darcy2d": (8, 16, None, 1),  # steady: [coefficient, solution] from two keys
    "swe2d": (8, 8, 12, 1),  # one group per sample
    "ns_incom2d": (4, 16, 120, 1),
}  # batch-first, two keys concatenated


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    """A factory of tasks over tiny synthetic files, built once per family."""
    root, cache = tmp_path_factory.mktemp("reads"), {}

    def make(family: str) -> TaskData:
        if family not in cache:
            n, nx, nt, rb = CASES[family]
            data_dir = root / family
            cfg = compose_cfg([f"task={family}", f"paths.data_dir={data_dir}", "data.generate=true"])
            ds = cfg.task.datasets[family]
            ds.synth.n_samples, ds.synth.nx, ds.synth.nt, ds.reduced_batch = n, nx, nt, rb
            cache[family] = build_task(family, ds, cfg.data, data_dir, [data_dir])
        return cache[family]

    return make


def whole_file(task: TaskData, file_idx: int, i: int) -> np.ndarray:
    """Sample ``i`` the way PDEBench's loaders get it: every key read whole, then strided in memory."""
    f, fam = task.files[file_idx], task.family
    j, space = i * f.rb, (slice(None),) + (slice(None, None, f.rr),) * fam.dim
    with h5py.File(f.path) as h:
        if fam.steady:
            out = np.stack([h["nu"][()][j], h["tensor"][()][j, 0]])[space][..., None]
        elif fam.layout == "group":
            out = h[sorted(h.keys())[j]]["data"][()][:: f.rr_t][space]
        else:
            stack = np.concatenate if fam.layout == "ns_incom" else np.stack
            out = stack([h[k][()][j] for k in fam.fields], axis=-1)[:: f.rr_t][space]
    return out.astype(np.float32)


def record_reads(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Every array h5py returns from a dataset read from now on."""
    got, original = [], h5py.Dataset.__getitem__

    def spy(self, args, *rest, **kw):
        out = original(self, args, *rest, **kw)
        got.append(np.asarray(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    return got


@pytest.mark.parametrize("family", CASES)
def test_lazy_preloaded_and_one_pass_reads_equal_a_whole_file_read(family: str, built) -> None:
    task, k = built(family), built(family).initial_step
    for split, ids in task.splits.items():
        want = [normalise(task, whole_file(task, f, i)) for f, i in ids]
        for horizon in (1,) if task.family.steady else (1, 2):
            lazy, pre = (WindowDataset(task, split, gb, horizon) for gb in (0.0, 1.0))
            assert lazy.source._cache is None and pre.source._cache is not None
            assert lazy.source.ids == pre.source.ids == ids  # same samples, same order
            for index in range(len(lazy)):
                j, s = divmod(index, lazy.per_traj)
                a, b = lazy[index], pre[index]
                assert all(torch.equal(a[key], b[key]) for key in ("x", "y", "cond"))
                np.testing.assert_array_equal(a["x"].numpy(), to_points(want[j][s : s + k]))
                np.testing.assert_array_equal(a["y"].numpy(), to_points(want[j][s + k : s + k + lazy.horizon]))
        lazy, pre = (TrajectoryDataset(task, split, preload_max_gb=gb) for gb in (0.0, 1.0))
        for j, traj in enumerate(want):
            assert torch.equal(lazy[j]["traj"], pre[j]["traj"])
            np.testing.assert_array_equal(pre[j]["traj"].numpy(), traj.reshape(traj.shape[0], -1, traj.shape[-1]))


@pytest.mark.parametrize("family", CASES)
def test_read_many_equals_read_in_blocks_of_any_size(family: str, built) -> None:
    f = built(family).files[0]
    idx = [i for i in range(f.n_samples) if i != 1]  # a gap: a block spans it, the skipped one is not returned
    sample = f.n_steps * math.prod(f.raw_space) * f.channels * 4
    for block in (1, 2 * sample, 2**30):
        got = list(f.read_many(idx[::-1], block))
        assert [i for i, _ in got] == idx
        for i, traj in got:
            np.testing.assert_array_equal(traj, f.read(i))
            np.testing.assert_array_equal(traj, whole_file(built(family), 0, i))


def test_a_damaged_block_is_reread_per_sample_so_the_error_names_it(built, monkeypatch: pytest.MonkeyPatch) -> None:
    f = built("advection1d").files[0]
    original = TrajectoryFile._fetch

    def damaged(self, rows, tsel):  # sample 2 (stored row 4) has a corrupt chunk
        if rows == 2 * f.rb or (isinstance(rows, slice) and rows.start <= 2 * f.rb < rows.stop):
            raise OSError("Can't read data (corrupt chunk)")
        return original(self, rows, tsel)

    monkeypatch.setattr(TrajectoryFile, "_fetch", damaged)
    assert [i for i, _ in f.read_many([1, 3], 2**30)] == [1, 3]  # the block spans it, but it is not wanted
    with pytest.raises(DataFileError, match=r"sample 4 cannot be read \(Can't read data"):
        list(f.read_many([1, 2, 3], 2**30))


def test_a_group_file_keeps_no_sample_open(built) -> None:
    task = built("swe2d")
    TrajectoryDataset(task, "train", preload_max_gb=1.0)
    # an open chunked dataset keeps its chunk cache: thousands of open groups would hold GBs
    assert task.files[0]._datasets == {}


@pytest.mark.parametrize("family", ["advection1d", "swe2d", "ns_incom2d"])
def test_a_lazy_window_reads_only_its_frames(family: str, built, monkeypatch: pytest.MonkeyPatch) -> None:
    task = built(family)
    f, frames = task.files[0], task.initial_step + 1
    windows = WindowDataset(task, "train", preload_max_gb=0)
    assert f.n_steps > frames, "the test needs trajectories longer than a window"
    got = record_reads(monkeypatch)
    windows[len(windows) - 1]  # the last window of the last trajectory
    assert sum(a.size for a in got) == frames * math.prod(f.raw_space) * f.channels
    assert {a.shape[0] for a in got} == {frames}  # (frames, *space[, C]) per key


def test_a_split_that_fits_is_read_with_one_read_per_field(built, monkeypatch: pytest.MonkeyPatch) -> None:
    task = built("cfd1d")  # density, pressure, Vx
    f, n = task.files[0], len(task.splits["train"])
    got = record_reads(monkeypatch)
    WindowDataset(task, "train", preload_max_gb=1.0)
    assert len(got) == 3, "one bulk read per field, not one per field and sample"
    sample = f.n_steps * math.prod(f.raw_space) * f.channels * 4
    monkeypatch.setattr(datasets, "PRELOAD_BLOCK_BYTES", 2 * sample)  # transient memory: two samples a block
    got.clear()
    WindowDataset(task, "train", preload_max_gb=1.0)
    assert len(got) == 3 * math.ceil(n / 2) and max(a.nbytes for a in got) <= 2 * sample // 3
    got.clear()
    split_gb = n * f.n_steps * math.prod(f.space) * f.channels * 4 / 2**30
    lazy = WindowDataset(task, "train", preload_max_gb=split_gb / 2)  # over budget: stays lazy, reads nothing yet
    assert lazy.source._cache is None and not got


def fake_pdebench(path: Path) -> Path:
    """A stand-in for PDEBench's fno/utils.py with its API and item layout (no network in tests)."""
    path.write_text("""
import h5py, numpy as np, torch

class FNODatasetSingle(torch.utils.data.Dataset):
    def __init__(self, filename, initial_step=10, saved_folder="", reduced_resolution=1, reduced_resolution_t=1,
                 reduced_batch=1, if_test=False, test_ratio=0.1, num_samples_max=-1):
        with h5py.File(saved_folder + filename, "r") as f:
            d = np.array(f["tensor"], dtype=np.float32)[::reduced_batch, ::reduced_resolution_t, ::reduced_resolution]
        d = np.moveaxis(d, 1, -1)[..., None]
        self.data, self.k = torch.tensor(d[int(len(d) * test_ratio):]), initial_step
    def __len__(self):
        return len(self.data)
    def __getitem__(self, i):
        return self.data[i, ..., : self.k, :], self.data[i], None

class FNODatasetMult(torch.utils.data.Dataset):
    def __init__(self, filename, initial_step=10, saved_folder="", if_test=False, test_ratio=0.1):
        self.path, self.k = saved_folder + filename + ".h5", initial_step
        with h5py.File(self.path, "r") as f:
            keys = sorted(f.keys())
        self.keys = keys[: int(len(keys) * (1 - test_ratio))]
    def __len__(self):
        return len(self.keys)
    def __getitem__(self, i):
        with h5py.File(self.path, "r") as f:
            d = torch.tensor(np.moveaxis(np.array(f[self.keys[i]]["data"], dtype="f"), 0, -2))
        return d[..., : self.k, :], d, None
""")
    return path


def test_the_read_benchmark_runs_and_its_numbers_agree(tmp_path: Path, capsys) -> None:
    data_dir = tmp_path / "data"
    generate("advection1d", data_dir, n_samples=10, nx=32, nt=56)
    generate("swe2d", data_dir, n_samples=10, nx=8, nt=12)
    out = tmp_path / "r.json"
    result = bench.main(
        [
            "--data-dir",
            str(data_dir),
            "--tasks",
            "advection1d,swe2d",
            "--repeats",
            "1",
            "--pdebench-utils",
            str(fake_pdebench(tmp_path / "utils.py")),
            "--json",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = {(r["task"], r["reader"]): r for r in result["rows"]}
    assert len(rows) == 2 * 5
    for task, kind, n in (("advection1d", "Single", 9), ("swe2d", "Mult", 9)):
        ref = rows[task, f"PDEBench FNODataset{kind}"]
        assert ref["items"] == n and ref["same_values"] and ref["vs_pdebench"] == 1.0
        for how in ("lazy", "preload"):
            traj, win = rows[task, f"UPS TrajectoryDataset, {how}"], rows[task, f"UPS WindowDataset, {how}"]
            assert traj["items"] == n and win["items"] % n == 0 and win["items"] > n and win["vs_pdebench"] is None
            assert traj["vs_pdebench"] == pytest.approx(traj["first_items_per_s"] / ref["first_items_per_s"])
        for r in (rows[task, name] for name in ("PDEBench FNODataset" + kind, "UPS WindowDataset, lazy")):
            assert 0 <= r["build_s"] <= r["first_s"] and r["peak_mb"] >= 0
            assert r["first_items_per_s"] == pytest.approx(r["items"] / r["first_s"])
    table = capsys.readouterr().out
    assert "python -m ups.bench.reads --data-dir" in table and f"torch {torch.__version__}" in table
    assert table.count("\n| advection1d |") == 5 and "(same values)" in table


def test_the_benchmark_says_how_to_provide_pdebench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(SystemExit, match="pip download --no-deps --python-version 3.10.*--pdebench-utils"):
        bench.pdebench_module(None, fetch=False)
