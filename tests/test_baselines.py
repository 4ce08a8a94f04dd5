"""PDEBench baselines (ups/models/fno.py, ups/models/unet.py): shapes, isolation, spec, errors, fitting."""

from __future__ import annotations

import math

import pytest
import torch

from ups.models import count_parameters
from ups.models.fno import FNO, SpectralConv, clamp_modes
from ups.models.spec import TaskIO, spec_of
from ups.models.unet import UNet, padded_grid, sample_bytes

SMALL = {FNO: dict(modes=4, width=8), UNet: dict(init_features=4)}


def coords_of(grid: tuple[int, ...]) -> torch.Tensor:
    """(1, P, dim) C-order grid coordinates in [-1, 1]."""
    axes = [torch.linspace(-1, 1, n) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(1, -1, len(grid))


def make(cls, tasks, **kw):
    torch.manual_seed(0)
    return cls(tasks, 3, **{**SMALL[cls], **kw})


def call(model, task, b=2, grid=None, coords_batch=1):
    io = model.tasks[task]
    grid = grid or io.grid
    x = torch.randn(b, math.prod(grid), io.in_channels)
    coords = coords_of(grid).expand(coords_batch, -1, -1)
    return model(task, x, coords, torch.randn(b, 3), grid=grid)


# k*C inputs: 1D Burgers-like (k=10, C=1), 2D with k=2, C=4, 3D CFD-like (k=2, C=5); odd grids included.
CASES = [TaskIO(10, 1, 1, (20,)), TaskIO(8, 4, 2, (12, 20)), TaskIO(10, 5, 3, (8, 6, 12)), TaskIO(3, 3, 2, (16, 16))]


@pytest.mark.parametrize("cls,kw", [(FNO, {}), (FNO, {"padding": 2}), (UNet, {})], ids=["fno", "fno-pad", "unet"])
@pytest.mark.parametrize("io", CASES, ids=lambda io: f"{io.dim}d-{io.in_channels}to{io.out_channels}")
@pytest.mark.parametrize("coords_batch", [1, 2])
def test_shapes(cls, kw, io, coords_batch):
    model = make(cls, {"t": io}, **kw)
    out = call(model, "t", coords_batch=coords_batch)
    assert out.shape == (2, math.prod(io.grid), io.out_channels)
    assert torch.isfinite(out).all()


def test_unet_pads_to_multiple_of_16():
    assert padded_grid((20, 16, 1)) == (32, 16, 16)
    model = make(UNet, {"t": TaskIO(2, 2, 1, (20,))}).eval()
    x = torch.randn(2, 20, 2)
    # The padded tail is cropped, so the first points cannot depend on how it was filled: compare
    # with a grid of 32 whose first 20 points are x and whose rest replicates the last point.
    full = torch.cat([x, x[:, -1:].expand(-1, 12, -1)], dim=1)
    ref = model.nets["t"](full.movedim(-1, 1)).movedim(1, -1)[:, :20]
    torch.testing.assert_close(model("t", x, None, None), ref)


def test_grid_argument_overrides_taskio_grid():
    model = make(FNO, {"t": TaskIO(1, 1, 2)})  # no grid known when built: modes clamp per call
    assert call(model, "t", grid=(6, 10)).shape == (2, 60, 1)


def test_fno_modes_clamped_to_grid():
    model = FNO({"t": TaskIO(1, 1, 2, (8, 6))}, 0, modes=12, width=4)
    assert clamp_modes(12, (8, 6)) == (4, 4)
    assert model.nets["t"].layers[0].spectral.weight.shape == (2, 4, 4, 4, 4, 2)
    padded = FNO({"t": TaskIO(1, 1, 1, (8,))}, 0, modes=12, width=4, padding=2)
    assert padded.nets["t"].layers[0].spectral.weight.shape[-2] == 6  # (8 + 2) // 2 + 1


def test_fno_pads_every_axis():
    model = make(FNO, {"t": TaskIO(1, 1, 3, (4, 6, 8))}, padding=3)
    seen = []
    model.nets["t"].layers[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[2:]))
    call(model, "t")
    assert seen == [(7, 9, 11)]


def test_spectral_conv_matches_explicit_corners():
    torch.manual_seed(0)
    conv = SpectralConv(3, (3, 4))
    x = torch.randn(2, 3, 10, 12)
    w = torch.view_as_complex(conv.weight)
    x_ft = torch.fft.rfft2(x)
    ref = torch.zeros(2, 3, 10, 7, dtype=torch.cfloat)
    ref[:, :, :3, :4] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :3, :4], w[0])
    ref[:, :, -3:, :4] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, -3:, :4], w[1])
    torch.testing.assert_close(conv(x), torch.fft.irfft2(ref, s=(10, 12)))


def test_spectral_conv_drops_modes_above_cutoff():
    conv = SpectralConv(2, (4,))
    pos = torch.linspace(0, 2 * math.pi, 33)[:-1]
    high, low = torch.cos(9 * pos).expand(1, 2, -1), torch.cos(2 * pos).expand(1, 2, -1)
    assert conv(high).abs().max() < 1e-5
    assert conv(low).abs().max() > 1e-3


@pytest.mark.parametrize("cls", [FNO, UNet])
def test_tasks_share_no_parameters(cls):
    model = make(cls, {"burgers_nu0.01": TaskIO(2, 1, 1, (16,)), "ns": TaskIO(2, 2, 2, (16, 16))})
    a, b = (set(map(id, model.nets[k].parameters())) for k in ("burgers_nu0_01", "ns"))
    assert a and b and not a & b
    call(model, "burgers_nu0.01").square().mean().backward()
    assert all(p.grad is None for p in model.nets["ns"].parameters())
    assert all(p.grad is not None for p in model.nets["burgers_nu0_01"].parameters())


@pytest.mark.parametrize("cls,name", [(FNO, "fno"), (UNet, "unet")])
def test_spec_blocks_and_groups(cls, name):
    model = make(cls, {"a": TaskIO(2, 1, 1, (16,)), "b": TaskIO(1, 1, 2, (16, 16))})
    spec = spec_of(model)
    assert spec.name == name and spec.model is cls and spec.single_task and spec.latent is None
    blocks = spec.blocks(model)
    inside = set(map(id, model.modules()))
    assert len(blocks) == (8 if cls is FNO else 18)  # 4 Fourier layers / 9 conv blocks per task
    assert all(isinstance(b, torch.nn.Module) and id(b) in inside for b in blocks)
    grouped = [id(p) for g in spec.groups(model).values() for p in g.parameters()]
    assert sorted(grouped) == sorted(map(id, model.parameters()))  # every parameter in one group


@pytest.mark.parametrize("cls", [FNO, UNet])
def test_blocks_are_traced_by_block_compile(cls):
    # parallelize.apply_compile calls block.compile(); a block whose forward is torch's own (plain
    # nn.Sequential) is silently left uncompiled, so check dynamo really captured each block.
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = make(cls, {"t": TaskIO(2, 1, 1, (16,))})
    blocks = spec_of(model).blocks(model)
    for block in blocks:
        block.compile(backend="eager")
    try:
        call(model, "t")
        assert counters["stats"]["unique_graphs"] > 0  # identical blocks may share one graph
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("cls", [FNO, UNet])
def test_bad_calls_raise(cls):
    model = make(cls, {"burgers": TaskIO(2, 1, 1, (16,))})
    x, coords = torch.randn(2, 16, 2), coords_of((16,))
    with pytest.raises(ValueError, match=r"unknown task 'ns'.*\['burgers'\]"):
        model("ns", x, coords, None)
    with pytest.raises(ValueError, match="do not fill the grid"):
        model("burgers", x, coords, None, grid=(20,))
    with pytest.raises(ValueError, match="dim=1"):
        model("burgers", x, coords, None, grid=(4, 4))
    with pytest.raises(ValueError, match=r"\(B, P, 2\)"):
        model("burgers", torch.randn(2, 16, 3), coords, None)
    with pytest.raises(ValueError, match="latents"):
        model("burgers", x, coords, None, latents=torch.randn(2, 4, 8))


def test_fno_uses_coords_and_ignores_cond():
    model = make(FNO, {"t": TaskIO(2, 1, 1, (16,))})
    x, coords = torch.randn(2, 16, 2), coords_of((16,))
    out = model("t", x, coords, torch.zeros(2, 3))
    torch.testing.assert_close(model("t", x, coords, torch.ones(2, 3)), out)
    assert not torch.allclose(model("t", x, coords.flip(1), None), out)
    with pytest.raises(ValueError, match="coords must be"):
        model("t", x, coords[..., :0], None)


def test_unet_refuses_large_3d_and_names_the_key():
    big = {"cfd": TaskIO(10, 5, 3, (128, 128, 128))}
    with pytest.raises(ValueError, match=r"model\.max_3d_sample_gib.*model\.init_features|init_features.*max_3d"):
        UNet(big, 0, init_features=32)
    assert sample_bytes((128,) * 3, 10, 32) == pytest.approx(8 * sample_bytes((64,) * 3, 10, 32), rel=1e-3)  # ~ points
    assert sample_bytes((40,) * 3, 10, 8) == sample_bytes((48,) * 3, 10, 8)  # counted on the padded grid
    UNet({"cfd": TaskIO(10, 5, 3, (64, 64, 64))}, 0, init_features=32)  # PDEBench's 3D CFD size fits


def test_fno_bf16_autocast_runs_fft_in_float32():
    model = make(FNO, {"t": TaskIO(2, 2, 2, (8, 8))})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = call(model, "t")
    assert out.shape == (2, 64, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("cls", [FNO, UNet])
def test_overfits_a_fixed_batch(cls):
    # Learn one step of periodic advection (shift by 2 points) from a fixed smooth batch.
    torch.manual_seed(0)
    grid = (32,)
    pos = torch.linspace(0, 2 * math.pi, 33)[:-1]
    amp = torch.randn(4, 3, 1)
    x = (amp[:, 0] * torch.sin(pos) + amp[:, 1] * torch.cos(2 * pos) + amp[:, 2] * torch.sin(3 * pos))[..., None]
    y = torch.roll(x, 2, dims=1)
    model = make(cls, {"adv": TaskIO(1, 1, 1, grid)})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    coords = coords_of(grid)
    losses = []
    for _ in range(60):
        loss = (model("adv", x, coords, None) - y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5, f"{cls.__name__}: loss {losses[0]:.3g} -> {losses[-1]:.3g}"


def test_parameter_counts_are_pdebench_sizes():
    # PDEBench's UNet1d(10, 1, 32) and FNO1d(modes 12, width 20, initial_step 10) on one channel, counted
    # by hand; the spectral weights count re and im (PDEBench's cfloat numel() counts each pair once).
    io = {"b": TaskIO(10, 1, 1, (64,))}
    assert count_parameters(UNet(io, 0, init_features=32)) == 2_708_673
    assert count_parameters(FNO(io, 0, modes=12, width=20)) == 43_137


@pytest.mark.parametrize(
    "name,cls,params",
    [("fno", FNO, 19_969), ("fno_pdebench", FNO, 43_137), ("unet", UNet, 170_673), ("unet_pdebench", UNet, 2_708_673)],
)
def test_model_yamls_compose_and_build(name, cls, params):
    from tests.conftest import compose_cfg
    from ups.models.spec import build

    model = build(compose_cfg([f"model={name}"]).model, {"b": TaskIO(10, 1, 1, (64,))}, cond_dim=4)
    assert type(model) is cls and count_parameters(model) == params
