"""Rotated and reflected copies of a sample, where a family's physics makes them samples too.

Where a family's PDE, boundary conditions and data distribution are unchanged by the square's
rotations and reflections and every channel is a scalar (``Family.symmetry == "d4"``: Darcy's
coefficient and pressure, 2D reaction-diffusion's u and v), a rotated or reflected sample is as
much a sample of the family as the original. ``data.augment=true`` trains on every such copy of
each training sample (:class:`ups.data.datasets.WindowDataset`): up to eight times the samples of
a family that has few. Darcy's models had fit their 104 training samples to a third of their test
error (docs/results.md, stage 13).

A copy is made on the grid as stored, then strided by ``reduced_resolution`` as PDEBench strides
(from the first point): cell centres strided by 2 start half a cell from one wall and one and a half
from the other, so a mirror image of the strided field would be moved by a cell, which trained
worse than the exact copies alone (stage 13). Only moves that map the stored grid onto itself are used.
Vector channels (velocities) would also need their components swapped and negated, so those
families declare no symmetry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

SYMMETRIES = ("", "d4")


@dataclass(frozen=True)
class Move:
    """One rotation or reflection of fields (T, X, Y, C): swap the two space axes, then reverse ``flips``."""

    transpose: bool = False
    flips: tuple[int, ...] = ()

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = np.swapaxes(frames, 1, 2) if self.transpose else frames
        return np.flip(out, tuple(1 + axis for axis in self.flips)) if self.flips else out


IDENTITY = Move()


def exact_moves(symmetry: str, axes: Sequence[np.ndarray], task: str = "") -> list[Move]:
    """The moves of ``symmetry`` that map a grid onto itself, the identity first. ``axes``: each
    axis's coordinates scaled to [-1, 1] over the family's domain. ``"d4"``: all 8 rotations and
    reflections on a square grid symmetric about the domain's centre; fewer where it is not."""
    if symmetry not in SYMMETRIES:
        raise ValueError(f"{task}: symmetry {symmetry!r} is not one of {SYMMETRIES}")
    if not symmetry:
        return [IDENTITY]
    if len(axes) != 2:
        raise ValueError(f"{task}: symmetry 'd4' needs a 2D grid, got {len(axes)} axes")
    same = lambda a, b: a.shape == b.shape and np.allclose(a, b, atol=1e-4)  # noqa: E731
    mirrored = [same(a[::-1], -a) for a in axes]
    return [
        Move(transpose, flips)
        for transpose in ((False, True) if same(axes[0], axes[1]) else (False,))
        for flips in ((), (0,), (1,), (0, 1))
        if all(mirrored[axis] for axis in flips)
    ]
