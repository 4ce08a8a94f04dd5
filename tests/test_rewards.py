"""Physics rewards (ups.evaluation.rewards) on exact synthetic solutions and perturbed candidates.

Each family's true next frame comes from the project's own generator at a tiny size; the reward
must rank it at least as high as every perturbation of it (up to float32 round-off), and strictly
higher than at least one, for every family that has terms.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ups.data.readers import TrajectoryFile
from ups.data.registry import FAMILIES, Family
from ups.data.synth import generate
from ups.evaluation.rewards import FHN_BOX, FHN_K, REWARDS, physics_reward, reward_terms

# family -> (nx, nt): the smallest sizes that still resolve each solution. Frames 1 -> 2 are
# t = 0.25 -> 0.5 of the span at nt = 5; swe2d needs 32 cells: at 16 the smeared dam-break front
# already carries ~1e-5 of int h through the outflow walls by then, no longer round-off.
SIZES = {
    "advection1d": (64, 5),
    "burgers1d": (64, 5),
    "diff_react1d": (64, 5),
    "diff_sorp1d": (64, 5),
    "cfd1d": (64, 5),
    "darcy2d": (16, None),
    "react_diff2d": (16, 5),
    "swe2d": (32, 5),
    "cfd2d": (16, 5),
    "ns_incom2d": (16, 5),
    "cfd3d": (8, 5),
}
N_SAMPLES = 2
ROUNDOFF = 1e-5  # float32 sums and the darcy stencil's 1/h^2 cancellation stay below this
# exact data has no violation beyond round-off, except the divergence term's stencil error O((kh)^2)
TRUE_FLOOR = {"divergence": 0.1}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def frames(request, tmp_path_factory):
    """(family, prev, cand, grid) from the family's generator: two consecutive frames (darcy2d: a, u)
    of N_SAMPLES trajectories as (B, P, C) float32."""
    fam = FAMILIES[request.param]
    nx, nt = SIZES[fam.name]
    (path,) = generate(fam.name, tmp_path_factory.mktemp(fam.name), n_samples=N_SAMPLES, nx=nx, nt=nt)
    reader = TrajectoryFile(path, fam)
    x = torch.from_numpy(np.stack([reader.read(i) for i in range(N_SAMPLES)]))  # (B, T, *grid, C)
    reader.close()
    grid = tuple(x.shape[2:-1])
    flat = x.reshape(x.shape[0], x.shape[1], -1, x.shape[-1])
    t0 = 0 if fam.steady else 1
    return fam, flat[:, t0], flat[:, t0 + 1], grid


def smooth_noise(cand: torch.Tensor, grid: tuple[int, ...], amp: float = 0.1) -> torch.Tensor:
    """Low-mode sines (k = 1, 2 per axis, random phases), zero mean on the grid, amplitude `amp`
    times each channel's standard deviation."""
    gen = torch.Generator().manual_seed(0)
    b, _, c = cand.shape
    noise = torch.zeros((b,) + grid + (c,))
    for axis, n in enumerate(grid):
        x = (torch.arange(n) + 0.5) / n
        shape = [1] * len(grid)
        shape[axis] = n
        for k in (1, 2):
            phase = 2 * math.pi * torch.rand(b, 1, c, generator=gen)
            wave = torch.sin(2 * math.pi * k * x.view(1, *shape, 1) + phase.view(b, *[1] * len(grid), c))
            noise = noise + wave
    noise = noise.reshape(b, -1, c)
    return cand + amp * cand.std(dim=1, keepdim=True) * noise / noise.std(dim=1, keepdim=True)


def perturbations(cand: torch.Tensor, grid: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Wrong candidates a model could produce: too large, shifted, noisy, sign-flipped, blown up."""
    return {
        "x1.1": 1.1 * cand,
        "offset": cand + 0.1 * cand.abs().mean(dim=1, keepdim=True),
        "smooth_noise": smooth_noise(cand, grid),
        "sign_flip": -cand,
        "x4": 4.0 * cand,
    }


def test_true_frame_is_ranked_above_perturbations(frames):
    fam, prev, cand, grid = frames
    terms = reward_terms(fam, prev, cand, grid)
    assert terms, f"{fam.name} has no terms; REWARDS says: {REWARDS[fam.name]}"
    for name, value in terms.items():  # the exact solution violates nothing (beyond round-off)
        assert (value > -TRUE_FLOOR.get(name, ROUNDOFF)).all(), (fam.name, name, value)
    best = physics_reward(fam, prev, cand, grid)
    strictly_worse = []
    for name, wrong in perturbations(cand, grid).items():
        reward = physics_reward(fam, prev, wrong, grid)
        assert (best >= reward - ROUNDOFF).all(), (fam.name, name, best, reward)
        if (reward < best - 1e-3).all():
            strictly_worse.append(name)
    assert strictly_worse, f"{fam.name}: no perturbation lowers the reward"


def test_terms_sum_shape_dtype_sign(frames):
    fam, prev, cand, grid = frames
    for c in [cand, *perturbations(cand, grid).values()]:
        reward = physics_reward(fam, prev, c, grid)
        terms = reward_terms(fam, prev, c, grid)
        assert reward.shape == (N_SAMPLES,) and reward.dtype == torch.float32
        assert torch.isfinite(reward).all() and (reward <= 0).all()
        for value in terms.values():
            assert value.shape == (N_SAMPLES,) and value.dtype == torch.float32 and (value <= 0).all()
        torch.testing.assert_close(reward, sum(terms.values()))
    # the domain only sets the cell size; the explicit default gives the same reward
    torch.testing.assert_close(physics_reward(fam, prev, cand, grid, fam.domain), physics_reward(fam, prev, cand, grid))


@pytest.mark.parametrize("n", [2, 6])  # 2: no interior point for the 2D stencils
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_zero_and_constant_fields_are_finite(family, n):
    fam = FAMILIES[family]
    grid = (n,) * fam.dim
    shape = (3, math.prod(grid), len(fam.channels))
    zero = torch.zeros(shape)
    reward = physics_reward(fam, zero, zero, grid)
    assert torch.equal(reward, torch.zeros(3))  # nothing is violated by nothing
    for prev, cand in ((zero, torch.ones(shape)), (torch.ones(shape), zero), (zero, -torch.ones(shape))):
        reward = physics_reward(fam, prev, cand, grid)
        assert torch.isfinite(reward).all() and (reward <= 0).all()
        assert (reward >= -2 * len(reward_terms(fam, prev, cand, grid))).all()  # bounded, even from zero


def test_every_family_documented_and_unknown_family_scores_zero():
    assert set(REWARDS) == set(FAMILIES)
    toy = Family("toy1d", 1, "tensor", ("tensor",), ("u",), (0.0, 1.0))
    x = torch.randn(4, 8, 1)
    assert reward_terms(toy, x, x + 1, (8,)) == {}
    assert torch.equal(physics_reward(toy, x, x + 1, (8,)), torch.zeros(4))


def test_input_checks_and_dtypes():
    fam = FAMILIES["cfd2d"]
    x = torch.rand(2, 16, 4) + 0.5
    with pytest.raises(ValueError, match="expected"):
        physics_reward(fam, x, x, (4, 5))
    with pytest.raises(ValueError, match="2-D"):
        physics_reward(fam, x, x, (16,))
    with pytest.raises(ValueError, match="differ"):
        physics_reward(fam, x, x[:1], (4, 4))
    with pytest.raises(ValueError, match="channels"):
        physics_reward(fam, x[..., :3], x[..., :3], (4, 4))
    y = x * 1.05
    ref = physics_reward(fam, x, y, (4, 4))
    assert physics_reward(fam, x.half(), y.half(), (4, 4)).dtype == torch.float32
    torch.testing.assert_close(physics_reward(fam, x.double(), y.double(), (4, 4)).float(), ref)


def test_fitzhugh_nagumo_box_is_the_invariance_threshold():
    assert FHN_BOX**3 - 2 * FHN_BOX - FHN_K == pytest.approx(0.0, abs=1e-9)
    fam = FAMILIES["react_diff2d"]
    prev = torch.full((1, 4, 2), 0.5)
    inside, outside = torch.full((1, 4, 2), FHN_BOX), torch.full((1, 4, 2), 2 * FHN_BOX)
    assert physics_reward(fam, prev, inside, (2, 2)).item() == 0.0
    assert physics_reward(fam, prev, outside, (2, 2)).item() == pytest.approx(-1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(frames):
    fam, prev, cand, grid = frames
    for c in [cand, *perturbations(cand, grid).values()]:
        got = physics_reward(fam, prev.cuda(), c.cuda(), grid)
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), physics_reward(fam, prev, c, grid), atol=1e-5, rtol=1e-4)


def test_fitzhugh_nagumo_pde_term_ranks_the_truth_above_what_a_model_gets_wrong(tmp_path):
    """The invariant box alone scores -u (the system is odd up to k) and a frame that barely moved as
    well as the truth; given dt, the PDE over the step ranks the truth above both, above a half-size
    change (an under-predicting model) and a 10 % overshoot."""
    fam = FAMILIES["react_diff2d"]
    (path,) = generate(fam.name, tmp_path, n_samples=2, nx=16, nt=21)
    reader = TrajectoryFile(path, fam)
    x, dt = torch.from_numpy(np.stack([reader.read(i) for i in range(2)])), reader.dt()
    reader.close()
    flat = x.reshape(2, x.shape[1], -1, 2)
    prev, cand, grid = flat[:, 1], flat[:, 2], tuple(x.shape[2:4])
    assert "pde" not in reward_terms(fam, prev, cand, grid)  # no dt: the box only
    truth = reward_terms(fam, prev, cand, grid, dt=dt)
    assert (truth["pde"] > -0.05).all(), truth
    wrong = {"sign_flip": -cand, "persistence": prev, "half_change": prev + 0.5 * (cand - prev), "x1.1": 1.1 * cand}
    best = physics_reward(fam, prev, cand, grid, dt=dt)
    for name, frame in wrong.items():
        assert (physics_reward(fam, prev, frame, grid, dt=dt) < best - 0.1).all(), name
    assert torch.equal(
        physics_reward(fam, prev, -cand, grid), physics_reward(fam, prev, cand, grid)
    )  # the old blind spot
