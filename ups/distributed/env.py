"""The one place that reads ranks and the launch environment.

Everything else asks a :class:`DistEnv`; nothing outside ``ups.distributed`` reads RANK or
WORLD_SIZE, so the rest of the code is testable without a process group.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "DistEnv":
        """Read torchrun's variables (set also by the elastic launcher and submitit's export)."""
        env = os.environ if environ is None else environ
        world = int(env.get("WORLD_SIZE", "1"))
        return cls(rank=int(env.get("RANK", "0")), local_rank=int(env.get("LOCAL_RANK", "0")),
                   world_size=world, local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, env: DistEnv) -> torch.device:
    """``auto`` picks CUDA when present; a rank uses the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("hardware.device=cuda but no CUDA device is visible; use hardware=cpu or hardware=auto")
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")
