"""Training on rotated and reflected copies: which copies a grid allows, that input and target move
together, that the families declaring the symmetry have it, and that NextStep uses it in training only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ups.data.datasets import task_keys
from ups.data.registry import FAMILIES
from ups.data.symmetry import augment, grid_permutations
from ups.data.synth import darcy, fhn2d
from ups.data.tasks import build_task
from ups.objectives import NextStep

from .test_tasks import tiny_cfg


def _coords(axes: list[np.ndarray]) -> torch.Tensor:
    return torch.tensor(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes)))


def _centres(n: int, stride: int = 1) -> np.ndarray:
    """Cell centres of n cells on [-1, 1], strided from the first as PDEBench's reduced_resolution does."""
    return (-1 + (np.arange(n) + 0.5) * 2 / n)[::stride]


def _images(field: torch.Tensor, perms: torch.Tensor) -> set[tuple]:
    return {tuple(field.reshape(-1)[p].tolist()) for p in perms}


def test_a_square_grid_of_cell_centres_has_all_eight_rotations_and_reflections() -> None:
    perms = grid_permutations((4, 4), "d4", _coords([_centres(4)] * 2))
    assert perms.shape == (8, 16) and torch.equal(perms[0], torch.arange(16))
    field = torch.arange(16.0).reshape(4, 4)
    expected = {tuple(torch.rot90(f, k).reshape(-1).tolist()) for k in range(4) for f in (field, field.T)}
    assert _images(field, perms) == expected


def test_a_strided_grid_keeps_only_the_copies_that_map_its_points_onto_themselves() -> None:
    # 16 centres strided by 2 start half a cell from the left wall and 1.5 from the right: a mirror
    # image would move the field by a cell, so only the transpose is exact
    perms = grid_permutations((8, 8), "d4", _coords([_centres(16, 2)] * 2))
    field = torch.arange(64.0).reshape(8, 8)
    assert _images(field, perms) == _images(field, torch.stack([torch.arange(64), field.T.reshape(-1).long()]))
    # not square: the four reflections, no transpose
    assert grid_permutations((4, 6), "d4", _coords([_centres(4), _centres(6)])).shape == (4, 24)
    # points on one x wall only, centres in y: the mirror image in y alone
    perms = grid_permutations((4, 4), "d4", _coords([np.linspace(-1, 0.5, 4), _centres(4)]))
    field = torch.arange(16.0).reshape(4, 4)
    assert _images(field, perms) == {tuple(field.reshape(-1).tolist()), tuple(field.flip(1).reshape(-1).tolist())}


def test_no_symmetry_is_the_identity_and_bad_requests_say_why() -> None:
    assert torch.equal(grid_permutations((5,), "", torch.zeros(5, 1)), torch.arange(5)[None])
    with pytest.raises(ValueError, match="'c4' is not one of"):
        grid_permutations((4, 4), "c4", torch.zeros(16, 2), "t")
    with pytest.raises(ValueError, match="needs a 2D grid"):
        grid_permutations((2, 2, 2), "d4", torch.zeros(8, 3), "t")


def test_augment_moves_each_samples_input_and_target_by_the_same_copy() -> None:
    perms = grid_permutations((4, 4), "d4", _coords([_centres(4)] * 2))
    x = torch.randn(64, 16, 3)  # 3 frames of one channel
    batch = {"x": x, "y": x[..., -1:].clone(), "task": "t"}
    torch.manual_seed(0)
    out = augment(batch, perms)
    assert torch.equal(out["x"][..., -1:], out["y"])
    for b in range(64):  # every sample one of its own copies, whole
        assert any(torch.equal(out["x"][b], x[b, p]) for p in perms)
    assert not torch.equal(out["x"], x)  # 64 samples drawing among 8 copies: some moved


@pytest.mark.parametrize("kind", ["transpose", "flip"])
def test_darcy_solutions_rotate_and_reflect_with_their_coefficient(kind: str) -> None:
    """The fact ``symmetry="d4"`` states for Darcy, checked on the solver that writes its files."""
    a = darcy.coefficient(np.random.default_rng(0), 1, 12)
    move = (lambda f: np.swapaxes(f, -1, -2)) if kind == "transpose" else (lambda f: f[..., ::-1, :])
    np.testing.assert_allclose(darcy.solve(move(a).copy(), 1.0), move(darcy.solve(a, 1.0)), atol=1e-10)


def test_reaction_diffusion_trajectories_rotate_and_reflect_with_their_start() -> None:
    """The same for 2D reaction-diffusion: the trajectory from a rotated start is the rotated trajectory."""
    s0 = np.random.default_rng(0).standard_normal((2, 1, 8, 8))  # (u v, sample, X, Y)
    t = np.array([0.0, 0.5, 1.0])
    rotated = np.rot90(s0, 1, axes=(-2, -1)).copy()
    np.testing.assert_allclose(
        fhn2d.solve(rotated, t, 0.25), np.rot90(fhn2d.solve(s0, t, 0.25), 1, axes=(-3, -2)), atol=1e-5
    )


@pytest.mark.parametrize(("family", "copies"), [("darcy2d", 2), ("react_diff2d", 8)])
def test_the_declared_families_get_the_copies_their_pdebench_grids_allow(
    family: str, copies: int, tmp_path: Path
) -> None:
    cfg = tiny_cfg(family, tmp_path)
    task = build_task(family, cfg.task.datasets[family], cfg.data, tmp_path, [tmp_path])
    keys = task_keys(task)
    assert keys["symmetry"] == "d4"
    assert len(grid_permutations(keys["grid"], keys["symmetry"], keys["coords"][0], family)) == copies
    assert {f for f, fam in FAMILIES.items() if fam.symmetry} == {"darcy2d", "react_diff2d"}


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, task, x, coords, cond, grid=None, latents=None):
        self.seen.append(x)
        return x[..., -1:]


def _darcy_like_batch(symmetry: str) -> dict:
    x = torch.randn(16, 16, 1)
    return {
        "task": "t",
        "x": x,
        "y": 2 * x,
        "coords": _coords([_centres(4)] * 2)[None].float(),
        "grid": (4, 4),
        "cond": torch.zeros(16, 4),
        "steady": True,
        "symmetry": symmetry,
    }


def test_next_step_trains_on_copies_of_symmetric_tasks_only_and_predicts_unmoved() -> None:
    model, batch = Recorder(), _darcy_like_batch("d4")
    torch.manual_seed(0)
    loss = NextStep(augment=True).loss(model, batch)
    assert not torch.equal(model.seen[-1], batch["x"])  # the model saw copies
    torch.testing.assert_close(loss, batch["x"].square().mean())  # and their own targets: y = 2x moved alike
    NextStep(augment=True).predict(model, batch)
    assert torch.equal(model.seen[-1], batch["x"])
    plain = _darcy_like_batch("")
    NextStep(augment=True).loss(model, plain)
    assert torch.equal(model.seen[-1], plain["x"])  # a family with no symmetry trains as it is
    NextStep().loss(model, batch)
    assert torch.equal(model.seen[-1], batch["x"])  # off by default
