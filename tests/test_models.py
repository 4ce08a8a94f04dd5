"""Tests for ups.models: shapes, init behaviour, multi-task plumbing, errors, precision, compile."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
import torch

from ups.models import LatentSurrogate, TaskIO, count_parameters

TINY = dict(hidden=32, depth=2, heads=2)
MODELS_DIR = Path(__file__).resolve().parents[1] / "ups" / "models"


def grid(*sizes: int) -> torch.Tensor:
    """Flattened [1, prod(sizes), d] grid in [-1, 1]^d."""
    axes = [torch.linspace(-1, 1, n) for n in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(1, -1, len(sizes))


TASKS = {"burgers_1d": TaskIO(10, 1, 1), "ns_2d": TaskIO(2, 2, 2), "cfd_3d": TaskIO(5, 5, 3)}
INPUTS = {"burgers_1d": grid(64), "ns_2d": grid(32, 32), "cfd_3d": grid(8, 8, 8)}
FINE = {"burgers_1d": grid(256), "ns_2d": grid(48, 48), "cfd_3d": grid(12, 12, 12)}


def make_model(tasks=None, **overrides) -> LatentSurrogate:
    torch.manual_seed(0)
    return LatentSurrogate(tasks or TASKS, **{**TINY, **overrides})


def perturb_gates(model: LatentSurrogate, std: float = 0.1) -> None:
    """Make the zero-initialised adaLN modulations nonzero, as after some training."""
    with torch.no_grad():
        for block in model.operator.blocks:
            block.modulation.weight.normal_(std=std)
            block.modulation.bias.normal_(std=std)


def sample(task: str, batch: int = 3):
    io = TASKS[task]
    coords = INPUTS[task]
    return torch.randn(batch, coords.shape[1], io.in_channels), coords, torch.randn(batch, 4)


@pytest.fixture(scope="module")
def model() -> LatentSurrogate:
    return make_model()


@pytest.mark.parametrize("task", list(TASKS))
def test_shapes_and_fine_query(model, task):
    fields, coords, cond = sample(task)
    io, n = TASKS[task], coords.shape[1]
    z = model.encode(task, fields, coords)
    # No grid given: the default lattice, 16 cells in 1D, 8x8 in 2D, 4x4x4 in 3D.
    assert z.shape == (3, {1: 16, 2: 64, 3: 64}[io.dim], 32) == (3, model.n_tokens(task), 32)
    assert model.step(task, z, cond).shape == z.shape
    assert model(task, fields, coords, cond).shape == (3, n, io.out_channels)
    fine = FINE[task]
    assert model(task, fields, coords, cond, query_coords=fine).shape == (3, fine.shape[1], io.out_channels)
    # Per-sample coordinates and scattered (non-grid) query points work too.
    batched = coords.expand(3, -1, -1).contiguous()
    scattered = torch.rand(3, 17, io.dim) * 2 - 1
    assert model(task, fields, batched, cond, query_coords=scattered).shape == (3, 17, io.out_channels)


def test_operator_is_identity_at_init(model):
    fields, coords, cond = sample("ns_2d")
    z = model.encode("ns_2d", fields, coords)
    torch.testing.assert_close(model.step("ns_2d", z, cond), z, rtol=0, atol=0)


def test_meta_init_then_reset_parameters_is_identity():
    # What a sharding wrapper does: build on the meta device, materialise, re-initialise.
    with torch.device("meta"):
        model = LatentSurrogate(TASKS, **TINY)
    model.to_empty(device="cpu")
    model.reset_parameters()
    fields, coords, cond = sample("cfd_3d")
    z = model.encode("cfd_3d", fields, coords)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(model.step("cfd_3d", z, cond), z, rtol=0, atol=0)


def test_cond_and_task_change_step_once_gates_nonzero():
    model = make_model(tasks={"a": TaskIO(1, 1, 1), "b": TaskIO(1, 1, 1)})
    perturb_gates(model)
    z = torch.randn(2, 16, 32)
    cond = torch.zeros(2, 4)
    out = model.step("a", z, cond)
    assert not torch.allclose(out, z, atol=1e-4)
    assert not torch.allclose(out, model.step("a", z, cond + 1.0), atol=1e-4)
    assert not torch.allclose(out, model.step("b", z, cond), atol=1e-5)


def test_token_lattice_follows_the_grid():
    tasks = {
        "a": TaskIO(10, 1, 1, (64,)),
        "b": TaskIO(2, 2, 2, (32, 32)),
        "c": TaskIO(5, 5, 3, (8, 8, 8)),
        "d": TaskIO(4, 4, 2, (24, 24)),
        "e": TaskIO(1, 1, 1, (30,)),
    }
    model = make_model(tasks=tasks)
    # patch [4, 4, 2]; 30 points: the divisor of 30 nearest 4 is 3 (tie with 5: more cells).
    assert model.token_shapes == {"a": (16,), "b": (8, 8), "c": (4, 4, 4), "d": (6, 6), "e": (10,)}
    coarse = make_model(tasks=tasks, patch=[8, 8, 4])
    assert coarse.token_shapes["a"] == (8,) and coarse.token_shapes["c"] == (2, 2, 2)
    # channel_cells: patch / C^(1/d) per axis, so a cell holds about as many values whatever C is:
    # 2 channels in 2D -> 4 / 1.41 -> 2 points; 4 channels -> 2; 5 channels in 3D (patch 4) -> 2.34 -> 2.
    per_channel = make_model(tasks=tasks, patch=[4, 4, 4], channel_cells=True)
    assert per_channel.token_shapes == {"a": (16,), "b": (16, 16), "c": (4, 4, 4), "d": (12, 12), "e": (10,)}
    assert make_model(tasks=tasks, patch=[4, 4, 4]).token_shapes["c"] == (2, 2, 2)


def test_an_operator_without_attention_mixes_tokens_by_its_spectral_filter_alone():
    model = make_model(operator_attention=False)
    assert all(block.attn is None for block in model.operator.blocks)
    assert count_parameters(model) < count_parameters(make_model())
    perturb_gates(model)
    fields, coords = torch.randn(2, 64, 10), INPUTS["burgers_1d"]
    out = model("burgers_1d", fields, coords, torch.zeros(2, 4))
    bumped = fields.clone()
    bumped[:, :4] += 1.0  # the first cell only: the filter carries it across the lattice
    far = (model("burgers_1d", bumped, coords, torch.zeros(2, 4)) - out)[:, 32:].abs().amax()
    assert far > 1e-5
    with pytest.raises(ValueError, match="without attention needs spectral_modes"):
        make_model(operator_attention=False, spectral_modes=[])


def test_encoding_is_local_and_affine_in_the_field():
    """A token reads only the points of its own cell, and (no norm on the tokens) scales with them:
    a LayerNorm there cost 2.5x in rollout error (docs/results.md)."""
    model = make_model(tasks={"a": TaskIO(10, 1, 1, (64,))})
    coords, fields = grid(64), torch.randn(2, 64, 10)
    z = model.encode("a", fields, coords)
    bumped = fields.clone()
    bumped[:, 8:12] += 1.0  # grid points 8..11 are cell 2 of 16
    changed = (model.encode("a", bumped, coords) - z).abs().amax(dim=(0, 2)) > 1e-6
    assert changed.tolist() == [i == 2 for i in range(16)]
    zero = model.encode("a", torch.zeros_like(fields), coords)
    torch.testing.assert_close(model.encode("a", 3.0 * fields, coords), 3.0 * z - 2.0 * zero, atol=1e-4, rtol=1e-4)


def test_model_starts_shift_equivariant_by_whole_cells():
    """Position embeddings start at zero, so at init shifting a periodic field by one cell shifts the
    decoded change by one cell: the model starts as shift-equivariant as an FNO and learns absolute
    position only where the data asks for it (random embeddings: Burgers 0.25 against 0.11, docs/results.md)."""
    model = make_model(tasks={"a": TaskIO(10, 1, 1, (64,)), "b": TaskIO(2, 2, 2, (32, 32))})
    perturb_gates(model)
    for task, sizes in (("a", (64,)), ("b", (32, 32))):
        io = model.tasks[task]
        axes = [(torch.arange(n) + 0.5) / n * 2 - 1 for n in sizes]  # cell-centred, as PDEBench's grids
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(1, -1, len(sizes))
        cond = torch.randn(2, 4)
        fields = torch.randn(2, *sizes, io.in_channels)
        out = model(task, fields.flatten(1, -2), coords, cond, grid=sizes).unflatten(1, sizes)
        shift = tuple(n // s for n, s in zip(sizes, model.token_shapes[task]))  # one cell along every axis
        axes = tuple(range(1, 1 + len(sizes)))
        rolled = model(task, fields.roll(shift, axes).flatten(1, -2), coords, cond, grid=sizes).unflatten(1, sizes)
        torch.testing.assert_close(rolled, out.roll(shift, axes), atol=1e-4, rtol=1e-4)
        with torch.no_grad():  # a learned position breaks it, so the check can fail
            model.position_proj[model.task_key(task)].out.bias.normal_()
        moved = model(task, fields.roll(shift, axes).flatten(1, -2), coords, cond, grid=sizes).unflatten(1, sizes)
        assert not torch.allclose(moved, out.roll(shift, axes), atol=1e-3)


@pytest.mark.parametrize("sizes", [(64,), (32, 24), (8, 8, 4)])
def test_grid_layout_gives_the_same_values_and_gradients(sizes):
    """Told the points are a grid in C order, encoding and decoding reshape per cell instead of
    scattering and gathering (4-6x faster on 2D grids): the values and gradients must not change,
    and points that are not that grid (shuffled) must take the general path."""
    task = {1: "burgers_1d", 2: "ns_2d", 3: "cfd_3d"}[len(sizes)]
    io = TASKS[task]
    model = make_model(tasks={task: TaskIO(io.in_channels, io.out_channels, io.dim, sizes)})
    perturb_gates(model)
    coords, cond = grid(*sizes), torch.randn(3, 4)
    fields = torch.randn(3, coords.shape[1], io.in_channels)

    def run(points, values, layout):
        model.zero_grad()
        out = model(task, values, points, cond, grid=layout)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    out, grads = run(coords, fields, None)
    fast, fast_grads = run(coords, fields, sizes)
    assert model.grid_layouts._known == {(task, sizes): True}
    torch.testing.assert_close(fast, out, atol=1e-5, rtol=1e-4)
    for a, b in zip(fast_grads, grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    perm = torch.randperm(coords.shape[1])
    model.grid_layouts._known.clear()
    shuffled, _ = run(coords[:, perm], fields[:, perm], sizes)
    assert model.grid_layouts._known == {(task, sizes): False}
    torch.testing.assert_close(shuffled, out[:, perm], atol=1e-5, rtol=1e-4)


def test_encoder_permutation_invariant_and_decoder_pointwise(model):
    fields, coords, cond = sample("ns_2d", batch=2)
    perm = torch.randperm(coords.shape[1])
    z = model.encode("ns_2d", fields, coords)
    torch.testing.assert_close(model.encode("ns_2d", fields[:, perm], coords[:, perm]), z, atol=1e-5, rtol=1e-4)
    full = model.decode("ns_2d", z, coords)
    subset = model.decode("ns_2d", z, coords[:, :50])
    torch.testing.assert_close(subset, full[:, :50], atol=1e-5, rtol=1e-4)


def test_encoder_parameters_disjoint_from_operator(model):
    enc = {id(p) for m in model.encoder_modules for p in m.parameters()}
    op = {id(p) for p in model.operator.parameters()}
    dec = {id(p) for m in model.decoder_modules for p in m.parameters()}
    assert enc and op and not enc & op and not dec & op and not enc & dec
    assert {id(p) for p in model.input_proj.parameters()} <= enc
    # Together the three groups cover the whole model.
    assert enc | op | dec == {id(p) for p in model.parameters()}


def test_overfits_tiny_batch():
    torch.manual_seed(0)
    model = make_model(tasks={"burgers_1d": TaskIO(10, 1, 1)})
    coords = grid(64)
    x = coords[..., 0]
    phase = torch.rand(4, 1) * 2 * math.pi
    fields = torch.stack([torch.sin(math.pi * x + phase + 0.1 * t) for t in range(10)], dim=-1)
    target = torch.sin(math.pi * x + phase + 1.0).unsqueeze(-1)
    cond = torch.randn(4, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(100):
        loss = torch.nn.functional.mse_loss(model("burgers_1d", fields, coords, cond), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_errors(model):
    fields, coords, cond = sample("burgers_1d")
    with pytest.raises(KeyError, match="known tasks.*burgers_1d"):
        model("nope", fields, coords, cond)
    with pytest.raises(ValueError, match=r"'burgers_1d'.*in_channels=10.*\(3, 64, 7\)"):
        model.encode("burgers_1d", fields[..., :7], coords)
    with pytest.raises(ValueError, match=r"'burgers_1d'.*dim=1.*\(1, 64, 2\)"):
        model.encode("burgers_1d", fields, torch.zeros(1, 64, 2))
    z = model.encode("burgers_1d", fields, coords)
    with pytest.raises(ValueError, match=r"'burgers_1d'.*dim=1.*\(1, 5, 3\)"):
        model.decode("burgers_1d", z, torch.zeros(1, 5, 3))
    with pytest.raises(ValueError, match=r"'burgers_1d'.*cond_dim=4"):
        model.step("burgers_1d", z, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="dim must be 1, 2 or 3"):
        TaskIO(1, 1, 4)


def test_gradients_reach_task_and_shared_parameters():
    model = make_model(tasks={"a": TaskIO(3, 2, 1), "b": TaskIO(1, 1, 2)}, encoder_layers=1, decoder_layers=2)
    perturb_gates(model)
    with torch.no_grad():  # position embeddings start at zero, like the gates: make them nonzero too
        for embedding in model.position_proj.values():
            embedding.out.weight.normal_(std=0.1)
    fields, coords, cond = torch.randn(2, 20, 3), torch.rand(1, 20, 1) * 2 - 1, torch.randn(2, 4)
    model("a", fields, coords, cond, query_coords=torch.rand(1, 9, 1) * 2 - 1).square().mean().backward()
    for name, p in model.named_parameters():
        if name.endswith(".b") or ".b." in name or ".filters.2" in name:  # task b's, or the 2D spectral filter
            assert p.grad is None, f"task b parameter {name} got a gradient"
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def test_bf16_autocast_cpu(model):
    fields, coords, cond = sample("ns_2d")
    perturb_model = make_model()
    perturb_gates(perturb_model)
    for m in (model, perturb_model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m("ns_2d", fields, coords, cond, query_coords=FINE["ns_2d"])
        assert out.shape == (3, 48 * 48, 2) and torch.isfinite(out).all()
        out.float().square().mean().backward()


def test_yaml_style_kwargs_and_parameter_count():
    kwargs = {
        "hidden": 32,
        "depth": 2,
        "heads": 2,
        "patch": [2, 4, 2],
        "lattice": [8, 4, 2],
        "cond_dim": 3,
        "fourier_features": 3,
        "basis": 8,
        "spectral_modes": [4, 4, 2],
        "spectral_group": 8,
        "mlp_ratio": 2.0,
        "dropout": 0.1,
        "encoder_layers": 0,
        "decoder_layers": 1,
        "predict_change": False,
    }
    model = LatentSurrogate(**kwargs, tasks={"burgers_nu0.01": {"in_channels": 2, "out_channels": 1, "dim": 1}})
    assert len(model.operator.blocks) == 2 and isinstance(model.operator.blocks, torch.nn.ModuleList)
    n = count_parameters(model)
    assert n == sum(p.numel() for p in model.parameters()) and n > 0
    model.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 0
    out = model("burgers_nu0.01", torch.randn(2, 8, 2), grid(8), torch.randn(2, 3))
    assert out.shape == (2, 8, 1)


def test_hydra_instantiate():
    instantiate = pytest.importorskip("hydra.utils").instantiate
    cfg = {"_target_": "ups.models.LatentSurrogate", **TINY}
    model = instantiate(cfg, tasks={"burgers_1d": TaskIO(10, 1, 1)})
    assert isinstance(model, LatentSurrogate)
    fields, coords, cond = sample("burgers_1d")
    assert model("burgers_1d", fields, coords, cond).shape == (3, 64, 1)


def test_models_package_is_pure_modules():
    files = sorted(MODELS_DIR.glob("*.py"))
    assert files
    banned = re.compile(r"torch\.distributed|os\.environ|getenv|get_rank|LOCAL_RANK|WORLD_SIZE")
    for path in files:
        text = path.read_text()
        assert not banned.search(text), f"{path.name} touches distributed state or env vars"
        assert len(text.splitlines()) < 300, f"{path.name} is too long"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef | ast.FunctionDef) and not node.name.startswith("_"):
                assert ast.get_docstring(node), f"{path.name}:{node.name} lacks a docstring"


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = make_model()
    perturb_gates(model)
    compiled = torch.compile(model, fullgraph=True)
    for task in ("burgers_1d", "ns_2d"):
        fields, coords, cond = sample(task)
        torch.testing.assert_close(
            compiled(task, fields, coords, cond), model(task, fields, coords, cond), atol=1e-4, rtol=1e-3
        )
    compiled("ns_2d", *sample("ns_2d")).square().mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
