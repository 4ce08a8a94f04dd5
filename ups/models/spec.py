"""What the training stack needs to know about a model family, besides its ``nn.Module`` code.

A model family is one module file in ``ups/models/`` holding the network, its config dataclass
(its typed schema, marked ``@schema("<name>")``, which configs read from the source without
importing torch: ``ups/models/schemas.py``) and a :class:`ModelSpec` passed to :func:`register`.
``parallelize``, the dry run, stage freezing and the latent cache ask the spec; none of them reads
a model's attributes.

Every model is called the same way by the objectives::

    model(task, x, coords, cond, grid=None, latents=None) -> (B, P, C), or (B, P, m*C)

A model with ``bundle = m > 1`` (temporal bundling) returns the next ``m`` frames of a time-dependent
task at once, time outermost as in ``x``; steady tasks always get one output.

``x`` holds the ``initial_step`` context frames of each point, ``(B, P, k*C)`` with time outermost
per point; ``coords`` is ``(1 or B, P, dim)`` in ``[-1, 1]``; ``cond`` is ``(B, cond_dim)``;
``grid`` is the spatial shape whose C-order flattening gives the P points, so a grid model
rebuilds ``(B, k*C, *grid)`` with :func:`points_to_grid`; ``latents`` replaces the encoding when a
stage reads cached latents (only models with a :class:`LatentEncoder`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import Tensor, nn


@dataclass
class TaskIO:
    """Sizes of one task, taken from its data when the model is built (never set in config)."""

    in_channels: int  # channels per point fed to the model = initial_step * C (context frames stacked)
    out_channels: int  # C, channels of one predicted frame
    dim: int  # spatial dimension: 1, 2 or 3
    grid: tuple[int, ...] = ()  # spatial shape of the task's grid (empty: unknown, points only)
    steady: bool = False  # no time axis (Darcy): one output, never a bundle of frames

    def __post_init__(self) -> None:
        self.in_channels, self.out_channels, self.dim = int(self.in_channels), int(self.out_channels), int(self.dim)
        self.grid = tuple(int(g) for g in self.grid)
        self.steady = bool(self.steady)
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"channel counts must be >= 1, got {self}")
        if self.dim not in (1, 2, 3):
            raise ValueError(f"dim must be 1, 2 or 3, got {self}")
        if self.grid and len(self.grid) != self.dim:
            raise ValueError(f"grid {self.grid} does not have dim={self.dim} axes")


def as_task_io(spec: TaskIO | Mapping) -> TaskIO:
    """A TaskIO from itself or a mapping (a config can describe tasks directly)."""
    return spec if isinstance(spec, TaskIO) else TaskIO(**dict(spec))


def module_keys(names: list[str]) -> dict[str, str]:
    """ModuleDict keys for task names: PDEBench names such as ``burgers_nu0.01`` hold '.', which keys may not."""
    keys = {name: str(name).replace(".", "_") for name in names}
    if len(set(keys.values())) != len(keys):
        raise ValueError(f"task names collide once '.' is replaced by '_': {sorted(names)}")
    return keys


def points_to_grid(x: Tensor, grid: tuple[int, ...]) -> Tensor:
    """(B, P, C) point values -> (B, C, *grid) channels-first grid (P is the C-order flattening of grid)."""
    b, p, c = x.shape
    if p != _prod(grid):
        raise ValueError(f"{p} points do not fill a grid of shape {tuple(grid)}")
    return x.reshape(b, *grid, c).movedim(-1, 1)


def grid_to_points(y: Tensor) -> Tensor:
    """(B, C, *grid) -> (B, P, C), the inverse of :func:`points_to_grid`."""
    return y.movedim(1, -1).reshape(y.shape[0], -1, y.shape[1])


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


@dataclass(frozen=True)
class LatentEncoder:
    """How a model's encoder runs alone, so a stage that freezes it can cache its latents."""

    encode: Callable[[nn.Module, str, Tensor, Tensor], Tensor]  # (model, task, x, coords) -> z
    shape: Callable[[nn.Module, str], tuple[int, ...]]  # shape of one window's latents of a task
    state: Callable[[nn.Module, str], dict[str, Tensor]]  # tensors the task's encoding reads (cache key)
    groups: tuple[str, ...] = ("encoder",)  # the freezable groups ``encode`` runs: frozen, its latents are fixed


@dataclass(frozen=True)
class ModelSpec:
    """One model family: its config schema and how the infrastructure treats its modules."""

    name: str  # the schema's name: conf/model/<x>.yaml lists ``/schema/model/<name>@_here_`` first
    model: type  # the nn.Module class (the spec of an instance is looked up by its class)
    schema: type  # dataclass of the config fields, with ``_target_``: ``model_schemas()[name]`` (ups/models/schemas.py)
    blocks: Callable[[nn.Module], list[nn.Module]]  # repeated blocks: activation checkpointing, compile, FSDP2
    groups: Callable[[nn.Module], dict[str, nn.Module]]  # module groups a stage may freeze, by name
    shard_units: Callable[[nn.Module], list[nn.Module]] = field(default=lambda m: [])  # more FSDP2 units
    latent: LatentEncoder | None = None  # None: no encoder whose latents can be cached
    # Where later stages attach their networks (a ModuleDict also listed in ``groups``); None: the
    # family has no latent space to put a diffusion, consistency or steady-prior head on.
    stage_heads: Callable[[nn.Module], nn.ModuleDict] | None = None
    single_task: bool = False  # one independent network per task, sharing nothing (documented baselines)


_SPECS: dict[type, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Make a model family known to the training stack (called at the bottom of its module file)."""
    _SPECS[spec.model] = spec
    return spec


def specs() -> list[ModelSpec]:
    """Every registered family: the first call imports each non-private module of ``ups.models``,
    whose families register themselves (the package itself imports nothing, see its docstring)."""
    _import_families()
    return list(_SPECS.values())


@functools.cache
def _import_families() -> None:
    import importlib
    import pkgutil

    import ups.models

    for info in pkgutil.iter_modules(ups.models.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"ups.models.{info.name}")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (``.module``) or torch.compile (``._orig_mod``)."""
    while True:
        inner = next(
            (m for m in (getattr(model, a, None) for a in ("module", "_orig_mod")) if isinstance(m, nn.Module)), None
        )
        if inner is None:
            return model
        model = inner


def spec_of(model: nn.Module) -> ModelSpec:
    """The spec of a (possibly wrapped) model; a model nobody registered gets a neutral one."""
    specs()
    m = unwrap(model)
    for cls in type(m).__mro__:
        if cls in _SPECS:
            return _SPECS[cls]
    return ModelSpec(
        name=type(m).__name__, model=type(m), schema=object, blocks=lambda _: [], groups=lambda mod: {"model": mod}
    )


def build(model_cfg: Any, tasks: Mapping[str, TaskIO], cond_dim: int) -> nn.Module:
    """Instantiate the configured model with the sizes that come from the data."""
    from hydra.utils import instantiate

    return instantiate(model_cfg, tasks=dict(tasks), cond_dim=cond_dim, _convert_="partial")
