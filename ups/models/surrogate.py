"""LatentSurrogate: a grid-agnostic, multi-task encode -> step -> decode PDE surrogate."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from torch import Tensor, nn

from ups.models.decoder import QueryDecoder
from ups.models.encoder import PerceiverEncoder, PointEmbedding
from ups.models.layers import FourierFeatures, ZeroLinear, init_weights
from ups.models.operator import LatentOperator
from ups.models.schemas import LatentSurrogateConfig  # torch-free: configs compose without importing torch
from ups.models.spec import LatentEncoder, ModelSpec, TaskIO, as_task_io, module_keys, register


class LatentSurrogate(nn.Module):
    """Encode fields on any point set to L latent tokens, step them in time, decode anywhere.

    Task-specific: input projections, query projections, output heads (ModuleDicts keyed by
    task) and a task embedding in the operator's condition. Shared: the encoder's latent
    queries and attention, the latent operator, and the decoder's attention/MLP, so tasks
    of different dimension and channel count train one operator.
    """

    def __init__(
        self,
        tasks: Mapping[str, TaskIO],
        hidden: int = 128,
        depth: int = 4,
        heads: int = 4,
        n_latents: int = 32,
        cond_dim: int = 4,
        fourier_features: int = 16,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        encoder_layers: int = 1,
        decoder_layers: int = 1,
        max_freq: float = 128.0,
    ):
        super().__init__()
        self.tasks: dict[str, TaskIO] = {str(name): as_task_io(spec) for name, spec in tasks.items()}
        if not self.tasks:
            raise ValueError("LatentSurrogate needs at least one task")
        self._keys = module_keys(list(self.tasks))
        hidden, depth, heads, n_latents = int(hidden), int(depth), int(heads), int(n_latents)
        if hidden % heads != 0:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.hidden, self.n_latents, self.cond_dim = hidden, n_latents, int(cond_dim)
        mlp_ratio, dropout = float(mlp_ratio), float(dropout)

        self.fourier = FourierFeatures(int(fourier_features), float(max_freq))
        self.input_proj = nn.ModuleDict(
            {
                self._keys[name]: PointEmbedding(io.in_channels, self.fourier.out_dim(io.dim), hidden)
                for name, io in self.tasks.items()
            }
        )
        self.query_proj = nn.ModuleDict(
            {self._keys[name]: PointEmbedding(0, self.fourier.out_dim(io.dim), hidden) for name, io in self.tasks.items()}
        )
        self.output_head = nn.ModuleDict(
            {self._keys[name]: nn.Linear(hidden, io.out_channels) for name, io in self.tasks.items()}
        )
        self.encoder = PerceiverEncoder(hidden, heads, n_latents, mlp_ratio, dropout, int(encoder_layers))
        self.operator = LatentOperator(
            hidden, depth, heads, self.cond_dim, list(self._keys.values()), mlp_ratio, dropout
        )
        self.decoder = QueryDecoder(hidden, heads, mlp_ratio, dropout, int(decoder_layers))
        # Networks of later stages (diffusion, consistency, steady prior), attached by name before
        # wrapping (ups.objectives.attach_heads); empty, it adds nothing to the state dict.
        self.stage_heads = nn.ModuleDict()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re)initialise every parameter; the operator's gates come out zero (identity blocks)."""
        for module in self.modules():
            if isinstance(module, nn.LayerNorm | nn.RMSNorm | ZeroLinear):
                module.reset_parameters()
        self.apply(init_weights)
        self.encoder.reset_latents()
        self.operator.reset_task_embeddings()

    # ------------------------------------------------------------------ validation helpers
    def _lookup(self, task: str) -> tuple[TaskIO, str]:
        try:
            return self.tasks[task], self._keys[task]
        except KeyError:
            raise KeyError(f"unknown task {task!r}; known tasks: {sorted(self.tasks)}") from None

    @staticmethod
    def _check_coords(task: str, io: TaskIO, coords: Tensor, what: str, batch: int) -> None:
        if coords.dim() != 3 or coords.shape[-1] != io.dim:
            raise ValueError(
                f"task {task!r}: {what} must be [B, N, {io.dim}] (dim={io.dim}), got shape {tuple(coords.shape)}"
            )
        if coords.shape[0] not in (1, batch):
            raise ValueError(f"task {task!r}: {what} batch must be 1 or {batch}, got {coords.shape[0]}")

    def _check_latents(self, task: str, z: Tensor) -> None:
        if z.dim() != 3 or z.shape[-1] != self.hidden:
            raise ValueError(f"task {task!r}: z must be [B, L, {self.hidden}], got shape {tuple(z.shape)}")

    # ------------------------------------------------------------------ public API
    def task_key(self, task: str) -> str:
        """The module key of a task (its name with '.' replaced), as heads index their per-task parts."""
        return self._lookup(task)[1]

    def encode(self, task: str, fields: Tensor, coords: Tensor) -> Tensor:
        """fields [B, P, in_channels], coords [B or 1, P, dim] in [-1, 1] -> z [B, L, hidden]."""
        io, key = self._lookup(task)
        if fields.dim() != 3 or fields.shape[-1] != io.in_channels:
            raise ValueError(
                f"task {task!r}: fields must be [B, P, {io.in_channels}] (in_channels={io.in_channels}), "
                f"got shape {tuple(fields.shape)}"
            )
        self._check_coords(task, io, coords, "coords", fields.shape[0])
        if coords.shape[1] != fields.shape[1]:
            raise ValueError(
                f"task {task!r}: coords have {coords.shape[1]} points but fields have {fields.shape[1]}"
            )
        points = self.input_proj[key](self.fourier(coords), fields)
        return self.encoder(points)

    def step(self, task: str, z: Tensor, cond: Tensor) -> Tensor:
        """z [B, L, hidden], cond [B or 1, cond_dim] -> z_next [B, L, hidden] (one time step)."""
        _, key = self._lookup(task)
        self._check_latents(task, z)
        if cond.dim() != 2 or cond.shape[-1] != self.cond_dim or cond.shape[0] not in (1, z.shape[0]):
            raise ValueError(
                f"task {task!r}: cond must be [{z.shape[0]}, {self.cond_dim}] (cond_dim={self.cond_dim}), "
                f"got shape {tuple(cond.shape)}"
            )
        return self.operator(z, cond, key)

    def decode(self, task: str, z: Tensor, coords: Tensor) -> Tensor:
        """z [B, L, hidden], coords [B or 1, Q, dim] -> fields [B, Q, out_channels] at those coords."""
        io, key = self._lookup(task)
        self._check_latents(task, z)
        self._check_coords(task, io, coords, "query coords", z.shape[0])
        queries = self.query_proj[key](self.fourier(coords))
        return self.output_head[key](self.decoder(queries, z))

    def forward(
        self, task: str, fields: Tensor | None, coords: Tensor, cond: Tensor, query_coords: Tensor | None = None,
        latents: Tensor | None = None, grid: tuple[int, ...] | None = None, run: Callable | None = None,
        **run_args: Any,
    ) -> Tensor:
        """One step: decode(step(encode(fields, coords), cond), query_coords or coords).

        ``latents`` (e.g. from the latent cache) replace ``encode(fields, coords)``; going through
        ``forward`` either way keeps data-parallel wrappers in the loop. ``grid`` is not needed:
        the model sees points and coordinates only. ``run``: instead, return
        ``run(self, task, fields, coords, cond, **run_args)``, so an objective's own composition of
        encode/step/decode/heads (``ups/objectives/``) also runs inside the wrapped forward, where
        DDP prepares its gradient reduction and FSDP2 gathers the root's parameters.
        """
        if run is not None:
            return run(self, task, fields, coords, cond, **run_args)
        z = self.encode(task, fields, coords) if latents is None else latents
        z = self.step(task, z, cond)
        return self.decode(task, z, coords if query_coords is None else query_coords)

    @property
    def encoder_modules(self) -> list[nn.Module]:
        """Modules holding every encoder parameter (shared encoder + task input projections)."""
        return [self.encoder, self.input_proj]

    @property
    def decoder_modules(self) -> list[nn.Module]:
        """Modules holding every decoder parameter (shared decoder + task query projections and heads)."""
        return [self.decoder, self.query_proj, self.output_head]


def _encoder_state(model: LatentSurrogate, task: str) -> dict[str, Tensor]:
    """What ``encode(task, ...)`` reads: the shared encoder and this task's input projection only, so
    training another task's projection does not invalidate this task's cached latents."""
    state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    key = model._lookup(task)[1]
    state.update({f"input_proj.{key}.{k}": v for k, v in model.input_proj[key].state_dict().items()})
    return state


SPEC = register(ModelSpec(
    name="latent",
    model=LatentSurrogate,
    schema=LatentSurrogateConfig,
    blocks=lambda m: list(m.operator.blocks),
    shard_units=lambda m: [m.encoder, m.decoder],
    groups=lambda m: {"encoder": torch.nn.ModuleList(m.encoder_modules), "operator": m.operator,
                      "decoder": torch.nn.ModuleList(m.decoder_modules), **m.stage_heads},
    stage_heads=lambda m: m.stage_heads,
    latent=LatentEncoder(encode=lambda m, task, x, coords: m.encode(task, x, coords),
                         shape=lambda m: (m.n_latents, m.hidden), state=_encoder_state),
))
