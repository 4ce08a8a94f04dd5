"""LatentSurrogate: a grid-agnostic, multi-task encode -> step -> decode PDE surrogate on lattice tokens."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch
from torch import Tensor, nn

from ups.models.decoder import LocalFieldDecoder
from ups.models.encoder import LatticeEncoder, PointEmbedding
from ups.models.lattice import GridLayouts, centres, locate, pool, task_token_shape, to_cells
from ups.models.layers import FourierFeatures, ZeroLinear, init_weights
from ups.models.operator import LatentOperator
from ups.models.schemas import schema
from ups.models.spec import LatentEncoder, ModelSpec, TaskIO, as_task_io, module_keys, register
from ups.models.spectral import SpectralMix
from ups.models.surrogate_checks import check_cond, check_coords, check_fields, check_latents, check_sizes
from ups.models.task_settings import task_settings


@schema("latent")  # read from this source without torch when configs compose (ups/models/schemas.py)
@dataclass
class LatentSurrogateConfig:
    """``conf/model/{tiny,small,base,large}.yaml``: sizes of the latent surrogate (tasks and cond_dim come from the data)."""

    _target_: str = "ups.models.surrogate.LatentSurrogate"
    hidden: int = 128
    depth: int = 4
    heads: int = 4
    # Grid points per token along each axis, for 1D, 2D and 3D tasks: a task's lattice is its grid divided
    # by these (docs/architecture.md), and with ``channel_cells`` by C^(1/d) more for a task of C channels
    # (ups.models.lattice.token_shape); ``lattice``: cells per axis of a task whose points form no grid.
    patch: List[int] = field(default_factory=lambda: [4, 4, 2])
    lattice: List[int] = field(default_factory=lambda: [16, 8, 4])
    channel_cells: bool = False
    fourier_features: int = 4  # sin/cos frequencies of positions (inside a cell, and of the cells)
    basis: int = 16  # functions per cell the decoder combines (>= grid points per cell to reproduce a patch)
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    encoder_layers: int = 0  # self-attention blocks after pooling
    decoder_layers: int = 0  # self-attention blocks before the coefficient heads
    # Fourier modes per lattice axis the operator's spectral mixing keeps, for 1D, 2D and 3D tasks
    # (empty: attention only), and the channels mixed together per mode (hidden: all, as FNO; 1: depthwise).
    spectral_modes: List[int] = field(default_factory=lambda: [8, 8, 4])
    spectral_group: int = 32
    operator_attention: bool = True  # off: the operator mixes tokens by the spectral filter alone (cheaper)
    predict_change: bool = True  # the network outputs next frame - last frame (the objectives add it back)
    # Frames predicted per call of a time-dependent task, for 1D, 2D and 3D tasks (temporal bundling: a
    # rollout's errors compound over fewer calls; docs/results.md, stage 7). Steady tasks get one.
    bundle: List[int] = field(default_factory=lambda: [1, 1, 1])
    by_task: Dict[str, Dict[str, int]] = field(default_factory=dict)  # by task name: bundle, context (frames), patch


class LatentSurrogate(nn.Module):
    """Encode fields on any point set to a lattice of latent tokens, step them in time, decode anywhere.

    Each task gets a lattice of cells sized from its grid (``patch`` grid points per cell and axis, fewer
    for more channels with ``channel_cells``); its points are pooled into the token of the cell that
    holds them (``encode``), the shared operator steps all tokens at once (``step``), and a query
    anywhere reads the token of its cell as the coefficients of a small field over that cell
    (``decode``). With ``predict_change`` the objectives add the last context frame to what the model
    outputs, so the network learns the change of the field over one step.

    Task-specific: point and position embeddings, coefficient heads and cell bases (ModuleDicts keyed by
    task) and a task embedding in the operator's condition. Shared: the operator and the encoder's and
    decoder's attention blocks, so tasks of different dimension and channel count train one operator.
    """

    def __init__(
        self,
        tasks: Mapping[str, TaskIO],
        hidden: int = 128,
        depth: int = 4,
        heads: int = 4,
        cond_dim: int = 4,
        patch: Sequence[int] = (4, 4, 2),
        lattice: Sequence[int] = (16, 8, 4),
        channel_cells: bool = False,
        fourier_features: int = 4,
        basis: int = 16,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        encoder_layers: int = 0,
        decoder_layers: int = 0,
        spectral_modes: Sequence[int] | None = (8, 8, 4),
        spectral_group: int = 32,
        operator_attention: bool = True,
        predict_change: bool = True,
        bundle: Sequence[int] = (1, 1, 1),
        by_task: Mapping[str, Mapping[str, int]] | None = None,
    ):
        super().__init__()
        self.tasks: dict[str, TaskIO] = {str(name): as_task_io(spec) for name, spec in tasks.items()}
        if not self.tasks:
            raise ValueError("LatentSurrogate needs at least one task")
        self._keys = module_keys(list(self.tasks))
        hidden, depth, heads, basis = int(hidden), int(depth), int(heads), int(basis)
        patch, lattice_default, bundle = check_sizes(hidden, heads, basis, patch, lattice, bundle)
        self.hidden, self.cond_dim, self.predict_change = hidden, int(cond_dim), bool(predict_change)
        # by task: frames per call (the objectives and evaluation read it), input channels read, cell sizes
        self.frames_per_call, self.read_channels, cells = task_settings(by_task or {}, self.tasks, bundle, patch=patch)
        self.token_shapes = {
            n: task_token_shape(io, cells[n], lattice_default, channel_cells) for n, io in self.tasks.items()
        }
        # Offsets inside a cell need a few low frequencies; cell centres span up to the finest lattice.
        self.local_fourier = FourierFeatures(int(fourier_features), 2.0 ** (int(fourier_features) - 1))
        self.position_fourier = FourierFeatures(
            int(fourier_features), float(max(max(s) for s in self.token_shapes.values()))
        )
        per_task = {name: (self._keys[name], io) for name, io in self.tasks.items()}
        # Encoder: each point's values times K learned functions of its place in the cell, averaged per cell (the
        # patch's first K "moments"), then one linear map: linear in the field, exact with <= K points per cell.
        self.encode_basis = nn.ModuleDict(
            {key: self._basis_net(io.dim, hidden, basis) for key, io in per_task.values()}
        )
        self.input_proj = nn.ModuleDict(
            {key: nn.Linear(basis * self.read_channels[name], hidden) for name, (key, _) in per_task.items()}
        )
        self.position_proj = nn.ModuleDict(
            {key: PointEmbedding(0, self.position_fourier.out_dim(io.dim), hidden) for key, io in per_task.values()}
        )
        self.basis = nn.ModuleDict({key: self._basis_net(io.dim, hidden, basis) for key, io in per_task.values()})
        outputs = {key: io.out_channels * self.frames_per_call[name] for name, (key, io) in per_task.items()}
        self.output_head = nn.ModuleDict({key: nn.Linear(hidden, n * (basis + 1)) for key, n in outputs.items()})
        self.encoder = LatticeEncoder(hidden, heads, mlp_ratio, dropout, int(encoder_layers))
        self.operator = LatentOperator(
            hidden,
            depth,
            heads,
            self.cond_dim,
            list(self._keys.values()),
            mlp_ratio,
            dropout,
            tuple(spectral_modes) if spectral_modes else None,
            int(spectral_group),
            tuple(sorted({io.dim for io in self.tasks.values()})),
            bool(operator_attention),
        )
        self.decoder = LocalFieldDecoder(hidden, heads, mlp_ratio, dropout, int(decoder_layers))
        # Later stages' networks, attached before wrapping (ups.objectives.attach_heads); empty: no state.
        self.stage_heads = nn.ModuleDict()
        self.grid_layouts = GridLayouts()  # which grids take the reshape path of encode and decode
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """(Re)initialise every parameter; the operator's gates come out zero (identity blocks)."""
        for module in self.modules():
            if isinstance(module, nn.LayerNorm | nn.RMSNorm | ZeroLinear | SpectralMix):
                module.reset_parameters()
        self.apply(init_weights)
        self.operator.reset_task_embeddings()

    def _basis_net(self, dim: int, hidden: int, basis: int) -> nn.Module:
        """K learned functions of a point's offset inside its cell (from its Fourier features)."""
        return nn.Sequential(
            nn.Linear(self.local_fourier.out_dim(dim), hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, basis)
        )

    def n_tokens(self, task: str) -> int:
        """Latent tokens of a task (cells of its lattice)."""
        self._lookup(task)
        return math.prod(self.token_shapes[task])

    def _lookup(self, task: str) -> tuple[TaskIO, str]:
        try:
            return self.tasks[task], self._keys[task]
        except KeyError:
            raise KeyError(f"unknown task {task!r}; known tasks: {sorted(self.tasks)}") from None

    # ------------------------------------------------------------------ public API
    def task_key(self, task: str) -> str:
        """The module key of a task (its name with '.' replaced), as heads index their per-task parts."""
        return self._lookup(task)[1]

    def _check_latents(self, task: str, z: Tensor) -> None:
        check_latents(task, z, self.n_tokens(task), self.hidden, self.token_shapes[task])

    def encode(self, task: str, fields: Tensor, coords: Tensor, grid: Sequence[int] | None = None) -> Tensor:
        """fields [B, P, in_channels], coords [B or 1, P, dim] in [-1, 1] -> z [B, L, hidden] (L: the task's
        cells). ``grid``: the spatial shape, when the points are that grid's in C order (faster, same values)."""
        io, key = self._lookup(task)
        check_fields(task, io, fields, coords)
        fields = fields[..., -self.read_channels[task] :]
        shape = self.token_shapes[task]
        index, offset = locate(coords, shape)
        phi = self.encode_basis[key](self.local_fourier(offset))  # [b, P, K]
        block = self.grid_layouts.blocks(task, shape, coords, grid)
        if block is None:
            moments = pool(
                (phi.unsqueeze(-1) * fields.to(phi.dtype).unsqueeze(-2)).flatten(-2), index, math.prod(shape)
            )
        else:
            per_cell = to_cells(fields.to(phi.dtype), shape, block)
            moments = (
                torch.einsum("blmc,lmk->blkc", per_cell, to_cells(phi, shape, block)[0]).flatten(-2) / per_cell.shape[2]
            )
        positions = self.position_proj[key](self.position_fourier(centres(shape, coords.device)))
        return self.encoder(self.input_proj[key](moments), positions.unsqueeze(0))

    def step(self, task: str, z: Tensor, cond: Tensor) -> Tensor:
        """z [B, L, hidden], cond [B or 1, cond_dim] -> z_next [B, L, hidden] (one time step)."""
        _, key = self._lookup(task)
        self._check_latents(task, z)
        check_cond(task, cond, z.shape[0], self.cond_dim)
        return self.operator(z, cond, key, self.token_shapes[task])

    def decode(self, task: str, z: Tensor, coords: Tensor, grid: Sequence[int] | None = None) -> Tensor:
        """z [B, L, hidden], coords [B or 1, Q, dim] -> fields [B, Q, out_channels * frames] at those coords
        (frames: the task's bundle, time outermost).
        ``grid``: as for :meth:`encode`."""
        io, key = self._lookup(task)
        self._check_latents(task, z)
        check_coords(task, io, coords, "query coords", z.shape[0])
        shape = self.token_shapes[task]
        block = self.grid_layouts.blocks(task, shape, coords, grid)
        return self.decoder(
            z,
            self.output_head[key],
            self.basis[key],
            self.local_fourier,
            locate(coords, shape),
            io.out_channels * self.frames_per_call[task],
            None if block is None else (shape, block),
        )

    def forward(
        self,
        task: str,
        fields: Tensor | None,
        coords: Tensor,
        cond: Tensor,
        query_coords: Tensor | None = None,
        latents: Tensor | None = None,
        grid: tuple[int, ...] | None = None,
        run: Callable | None = None,
        **run_args: Any,
    ) -> Tensor:
        """One step: decode(step(encode(fields, coords), cond), query_coords or coords).

        ``latents`` (e.g. from the latent cache) replace ``encode(fields, coords)``; going through
        ``forward`` either way keeps data-parallel wrappers in the loop. ``grid`` is not needed:
        the model sees points and coordinates only; given, it says the points are that grid's in C
        order, which makes encoding and decoding a reshape (same values, faster). ``run``: instead, return
        ``run(self, task, fields, coords, cond, **run_args)``, so an objective's own composition of
        encode/step/decode/heads (``ups/objectives/``) also runs inside the wrapped forward, where
        DDP prepares its gradient reduction and FSDP2 gathers the root's parameters.
        """
        if run is not None:
            return run(self, task, fields, coords, cond, **run_args)
        z = self.encode(task, fields, coords, grid) if latents is None else latents
        z = self.step(task, z, cond)
        return self.decode(task, z, coords, grid) if query_coords is None else self.decode(task, z, query_coords)

    @property
    def encoder_modules(self) -> list[nn.Module]:
        """Modules holding every encoder parameter (shared encoder + task input projections)."""
        return [self.encoder, self.encode_basis, self.input_proj, self.position_proj]

    @property
    def decoder_modules(self) -> list[nn.Module]:
        """Modules holding every decoder parameter (shared decoder + task query projections and heads)."""
        return [self.decoder, self.basis, self.output_head]


def _encoder_state(model: LatentSurrogate, task: str) -> dict[str, Tensor]:
    """What ``encode(task, ...)`` reads: the shared encoder and this task's input projection only, so
    training another task's projection does not invalidate this task's cached latents."""
    state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    key = model._lookup(task)[1]
    for name in ("encode_basis", "input_proj", "position_proj"):
        state.update({f"{name}.{key}.{k}": v for k, v in getattr(model, name)[key].state_dict().items()})
    return state


SPEC = register(
    ModelSpec(
        name="latent",
        model=LatentSurrogate,
        schema=LatentSurrogateConfig,
        blocks=lambda m: list(m.operator.blocks),
        shard_units=lambda m: [m.encoder, m.decoder],
        groups=lambda m: {
            "encoder": torch.nn.ModuleList(m.encoder_modules),
            "operator": m.operator,
            "decoder": torch.nn.ModuleList(m.decoder_modules),
            **m.stage_heads,
        },
        stage_heads=lambda m: m.stage_heads,
        latent=LatentEncoder(
            encode=lambda m, task, x, coords: m.encode(task, x, coords),
            shape=lambda m, task: (m.n_tokens(task), m.hidden),
            state=_encoder_state,
        ),
    )
)
