"""Rotations and reflections of fields on a grid, as permutations of its points.

Where a family's PDE, boundary conditions and data distribution are unchanged by the square's
rotations and reflections and every channel is a scalar (``Family.symmetry == "d4"``: Darcy's
coefficient and pressure, 2D reaction-diffusion's u and v), a rotated or reflected sample is as
much a sample of the family as the original, and training on such copies
(``NextStep(augment=True)``) gives a family with few samples more of them: Darcy's models fit their
training samples to a third of their test error (docs/results.md, stage 13).

Only the symmetries that map the grid's points onto themselves are used. PDEBench's
``reduced_resolution`` strides a grid from its first point, so cell centres strided by 2 (Darcy
here: 64 -> 32 per axis) start half a cell from one wall and one and a half from the other: there only the reflection
about the diagonal (the transpose) is exact, and the others would move the field by a cell, which
trained worse than the transpose alone (stage 13). Vector channels (velocities) would also need
their components swapped and negated, so those families declare no symmetry.
"""

from __future__ import annotations

import torch

SYMMETRIES = ("", "d4")


def grid_permutations(grid: tuple[int, ...], symmetry: str, coords: torch.Tensor, task: str = "") -> torch.Tensor:
    """(G, P) point indices: row g holds, for every point of the C-order flattened ``grid``, the point
    whose values it takes under the g-th symmetry; row 0 is the identity. ``"d4"`` on a 2D grid: those
    of the square's 8 rotations and reflections that map ``coords`` (P, 2) in [-1, 1] onto themselves
    (all 8 on a square grid symmetric about the domain's centre; the transpose alone on a strided one).
    """
    if symmetry not in SYMMETRIES:
        raise ValueError(f"{task}: symmetry {symmetry!r} is not one of {SYMMETRIES}")
    n = 1
    for size in grid:
        n *= size
    idx = torch.arange(n).reshape(grid)
    if not symmetry:
        return idx.reshape(1, -1)
    if len(grid) != 2:
        raise ValueError(f"{task}: symmetry 'd4' needs a 2D grid, got {tuple(grid)}")
    coords = torch.as_tensor(coords, dtype=torch.float64).reshape(n, 2)
    perms = []
    for transpose in (False, True) if grid[0] == grid[1] else (False,):
        for flips in ((), (0,), (1,), (0, 1)):
            moved = idx.T if transpose else idx
            perm = (moved.flip(flips) if flips else moved).reshape(-1)
            if torch.allclose(coords[perm], _image(coords, transpose, flips), atol=1e-4):
                perms.append(perm)
    return torch.stack(perms)


def _image(coords: torch.Tensor, transpose: bool, flips: tuple[int, ...]) -> torch.Tensor:
    # where the point whose value lands at each point must sit: the flipped axes mirrored, then swapped
    out = coords.clone()
    for axis in flips:
        out[:, axis] = -out[:, axis]
    return out.flip(-1) if transpose else out


def augment(batch: dict, perms: torch.Tensor) -> dict:
    """The batch with each sample's ``x`` and ``y`` moved by one of ``perms`` drawn at random (the
    global torch generator, which checkpoints carry), the same for its input and its target."""
    x, y = batch["x"], batch["y"]
    pick = perms.to(x.device)[torch.randint(len(perms), (x.shape[0],), device=x.device)]  # (B, P)
    return {
        **batch,
        "x": x.gather(1, pick[..., None].expand_as(x)),
        "y": y.gather(1, pick[..., None].expand_as(y)),
    }
