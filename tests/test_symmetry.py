"""Rotated and reflected copies (``data.augment``): which moves a grid allows, that the declared
families have the symmetry, that a copy is made before PDEBench's stride, and that only training
windows get copies."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ups.data.datasets import TrajectoryDataset, WindowDataset
from ups.data.registry import FAMILIES
from ups.data.symmetry import IDENTITY, Move, exact_moves
from ups.data.synth import darcy, fhn2d
from ups.data.tasks import build_task
from ups.distributed.env import DistEnv
from ups.training.train_sets import TrainSets

from .test_tasks import tiny_cfg


def _centres(n: int) -> np.ndarray:
    """Cell centres of n cells on [-1, 1], as the generators write them."""
    return -1 + (np.arange(n) + 0.5) * 2 / n


def _images(field: np.ndarray, moves: list[Move]) -> set[tuple]:
    return {tuple(move(field[None, ..., None]).reshape(-1).tolist()) for move in moves}


def test_a_square_grid_of_cell_centres_allows_all_eight_rotations_and_reflections() -> None:
    moves = exact_moves("d4", [_centres(4)] * 2)
    assert len(moves) == 8 and moves[0] == IDENTITY
    field = np.arange(16.0).reshape(4, 4)
    assert _images(field, moves) == {
        tuple(np.rot90(f, k).reshape(-1).tolist()) for k in range(4) for f in (field, field.T)
    }


def test_a_grid_that_is_not_symmetric_keeps_only_the_moves_that_map_it_onto_itself() -> None:
    one_wall = np.linspace(-1, 0.5, 4)  # a point on one wall, none on the other
    assert exact_moves("d4", [one_wall, _centres(4)]) == [IDENTITY, Move(False, (1,))]
    assert exact_moves("d4", [one_wall, one_wall]) == [IDENTITY, Move(True, ())]
    assert len(exact_moves("d4", [_centres(4), _centres(6)])) == 4  # not square: no transpose
    assert exact_moves("", [_centres(4)]) == [IDENTITY]


def test_bad_symmetries_say_why() -> None:
    with pytest.raises(ValueError, match="'c4' is not one of"):
        exact_moves("c4", [_centres(4)] * 2, "t")
    with pytest.raises(ValueError, match="needs a 2D grid"):
        exact_moves("d4", [_centres(4)] * 3, "t")


@pytest.mark.parametrize("kind", ["transpose", "flip"])
def test_darcy_solutions_rotate_and_reflect_with_their_coefficient(kind: str) -> None:
    """The fact ``symmetry="d4"`` states for Darcy, checked on the solver that writes its files."""
    a = darcy.coefficient(np.random.default_rng(0), 1, 12)
    move = (lambda f: np.swapaxes(f, -1, -2)) if kind == "transpose" else (lambda f: f[..., ::-1, :])
    np.testing.assert_allclose(darcy.solve(move(a).copy(), 1.0), move(darcy.solve(a, 1.0)), atol=1e-10)


def test_reaction_diffusion_trajectories_rotate_with_their_start() -> None:
    """The same for 2D reaction-diffusion: the trajectory from a rotated start is the rotated trajectory."""
    s0 = np.random.default_rng(0).standard_normal((2, 1, 8, 8))  # (u v, sample, X, Y)
    t = np.array([0.0, 0.5, 1.0])
    rotated = np.rot90(s0, 1, axes=(-2, -1)).copy()
    np.testing.assert_allclose(
        fhn2d.solve(rotated, t, 0.25), np.rot90(fhn2d.solve(s0, t, 0.25), 1, axes=(-3, -2)), atol=1e-5
    )


@pytest.fixture(scope="module")
def tiny_tasks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    data = tmp_path_factory.mktemp("sym")
    out = {}
    for family in ("darcy2d", "react_diff2d", "advection1d"):
        cfg = tiny_cfg(family, data)
        out[family] = build_task(family, cfg.task.datasets[family], cfg.data, data, [data])
    return out


def test_the_declared_families_get_every_copy_of_their_stored_grids(tiny_tasks: dict) -> None:
    assert {f for f, fam in FAMILIES.items() if fam.symmetry} == {"darcy2d", "react_diff2d"}
    assert len(tiny_tasks["darcy2d"].copies()) == 8  # stored 16 x 16 cell centres, strided by 2 to 8 x 8
    assert len(tiny_tasks["react_diff2d"].copies()) == 8
    assert tiny_tasks["advection1d"].copies() == [IDENTITY]


def test_a_copy_is_the_stored_field_moved_then_strided_as_pdebench_strides(tiny_tasks: dict) -> None:
    task = tiny_tasks["darcy2d"]
    f = task.files[0]
    assert f.rr == 2
    with h5py.File(f.path) as h5:
        stored = h5["tensor"][0, 0]  # sample 0's solution on the stored grid
    mirror = Move(False, (0,))
    np.testing.assert_array_equal(f.read(0, move=mirror)[1, ..., 0], stored[::-1][::2, ::2])
    (_, move, copy), *_ = f.read_copies([0], 2**20, [mirror])
    assert move == mirror and np.array_equal(copy, f.read(0, move=mirror))
    # the strided field's own mirror image is another grid: a cell away, not the copy
    assert not np.array_equal(f.read(0)[1, ::-1, :, 0], stored[::-1][::2, ::2])


@pytest.mark.parametrize("preload_gb", [2.0, 0.0])
def test_training_windows_hold_every_copy_and_evaluation_none(tiny_tasks: dict, preload_gb: float) -> None:
    task = tiny_tasks["darcy2d"]
    plain = WindowDataset(task, "train", preload_gb)
    copies = WindowDataset(task, "train", preload_gb, copies=True)
    n = len(plain)
    assert len(copies) == 8 * n
    for k, move in enumerate(task.copies()):  # copy k of sample j sits at k * n + j
        expected = task.files[0].read(task.splits["train"][1][1], move=move)
        got = copies[k * n + 1]["y"].reshape(task.grid).numpy()
        stats = task.stats.arrays()
        np.testing.assert_allclose(got * stats[3][0] + stats[2][0], expected[1, ..., 0], rtol=1e-5, atol=1e-6)
    advection = WindowDataset(tiny_tasks["advection1d"], "train", preload_gb, copies=True)
    assert advection.source.moves == []  # no symmetry: the data as stored (and its latent cache key)
    assert len(TrajectoryDataset(task, "val")) == len(task.splits["val"])


def test_data_augment_reaches_the_training_sets(tiny_tasks: dict, tmp_path: Path) -> None:
    tasks = [tiny_tasks["darcy2d"], tiny_tasks["advection1d"]]
    cfg = tiny_cfg("pdebench2", tmp_path)
    sizes = {}
    for augment in (False, True):
        cfg.data.augment = augment
        sizes[augment] = TrainSets(tasks, cfg, DistEnv(), torch.device("cpu"), tmp_path).raw.sizes()
    assert sizes[True] == [8 * sizes[False][0], sizes[False][1]]
