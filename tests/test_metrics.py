"""PDEBench metrics (ups.evaluation.pdebench_metrics) against hand computations on small arrays."""

import math

import pytest
import torch

from ups.evaluation.pdebench_metrics import METRICS, MetricSums, nrmse_per_sample, pdebench_metrics

A = 0.3  # sine amplitude for the fRMSE tests


def field(values):
    """Nested lists (B, T, P, C) -> float64 tensor."""
    return torch.tensor(values, dtype=torch.float64)


def test_rmse_nrmse_max_crmse_by_hand():
    # one sample, one step, 4 points, 2 channels
    # ch0: y = [3, 4, 0, 0], p = y + [0, 0, 0, 2]: rmse = sqrt(4/4) = 1, ||y||_rms = sqrt(25/4) = 2.5,
    #      nrmse = 0.4, max = 2, crmse = |2| / 4 = 0.5
    # ch1: y = [1, 1, 1, 1], p = [2, 0, 1, 1]: rmse = sqrt(2/4) = 0.70710678, nrmse = same, max = 1, crmse = 0
    y = field([[[[3, 1], [4, 1], [0, 1], [0, 1]]]])
    p = field([[[[3, 2], [4, 0], [0, 1], [2, 1]]]])
    m = pdebench_metrics(p, y, (4,))
    assert m["rmse/0"] == pytest.approx(1.0) and m["rmse/1"] == pytest.approx(0.70710678)
    assert m["rmse"] == pytest.approx(0.85355339)
    assert m["nrmse/0"] == pytest.approx(0.4) and m["nrmse"] == pytest.approx(0.55355339)
    assert m["max/0"] == 2.0 and m["max/1"] == 1.0 and m["max"] == 1.5
    assert m["crmse/0"] == pytest.approx(0.5) and m["crmse/1"] == pytest.approx(0.0)
    assert m["n_samples"] == 1 and m["nrmse_t"] == pytest.approx([0.55355339])
    assert set(METRICS) <= set(m)
    assert nrmse_per_sample(p, y).tolist() == pytest.approx([0.55355339])


def test_nrmse_per_sample_matches_training_metric():
    try:  # the training-side module imports the objective, which others may be moving around
        from ups.evaluation.metrics import nrmse
    except ImportError as exc:
        pytest.skip(f"ups.evaluation.metrics not importable right now: {exc}")
    g = torch.Generator().manual_seed(0)
    y, p = torch.randn(3, 4, 10, 2, generator=g), torch.randn(3, 4, 10, 2, generator=g)
    torch.testing.assert_close(nrmse_per_sample(p, y), nrmse(p, y))
    assert pdebench_metrics(p, y, (10,))["nrmse"] == pytest.approx(nrmse(p, y).mean().item())


def test_per_sample_mean_not_pooled():
    # sample A: y = 1, error +-0.1 -> nRMSE 0.1; sample B: y = 10, same error -> nRMSE 0.01
    err = [0.1, -0.1, 0.1, -0.1]
    y = field([[[[1]] * 4], [[[10]] * 4]]).view(2, 1, 4, 1)
    p = y + field(err).view(1, 1, 4, 1)
    m = pdebench_metrics(p, y, (4,))
    assert m["nrmse"] == pytest.approx(0.055)
    pooled = math.sqrt(8 * 0.01) / math.sqrt(4 * 1 + 4 * 100)  # ||p - y|| / ||y|| over the batch = 0.01407
    assert pooled == pytest.approx(0.014071, abs=1e-6)
    assert abs(m["nrmse"] - pooled) > 0.04


def test_conditioning_frames_excluded():
    # T = 4, first k = 2 frames exact (context), frames 2, 3 off by half the target: nRMSE 0.5 each
    k = 2
    y = torch.ones(1, 4, 6, 1, dtype=torch.float64)
    p = y.clone()
    p[:, k:] = 1.5
    only_pred = pdebench_metrics(p[:, k:], y[:, k:], (6,))
    with_context = pdebench_metrics(p, y, (6,))  # what PDEBench 0.1.0 scores
    assert only_pred["nrmse"] == pytest.approx(0.5)
    assert only_pred["nrmse_t"] == pytest.approx([0.5, 0.5])
    assert with_context["nrmse"] == pytest.approx((0 + 0 + 0.5 + 0.5) / 4)
    assert with_context["nrmse"] < only_pred["nrmse"]


def sine_1d(n, m, b=2):
    x = torch.arange(n, dtype=torch.float64) / n
    y = torch.randn(b, 1, n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return y + A * torch.sin(2 * math.pi * m * x).view(1, 1, n, 1), y


@pytest.mark.parametrize("m,band,width", [(2, "low", 4), (6, "mid", 8), (20, "high", 21)])
def test_frmse_bands_1d_sine(m, band, width):
    # rfft of a*sin(2*pi*m*x) on n points: |coefficient| = a*n/2 at k = m, so E_m = a/2 and the band mean
    # is a/2 / width; n = 64 -> k = 0..32, high band k = 12..32 has 21 entries
    p, y = sine_1d(64, m)
    res = pdebench_metrics(p, y, (64,))
    for b in ("low", "mid", "high"):
        expected = A / 2 / width if b == band else 0.0
        assert res[f"frmse_{b}"] == pytest.approx(expected, abs=1e-12), b


@pytest.mark.parametrize("m,band", [(2, "low"), (6, "mid")])
def test_frmse_bands_2d_sine_along_x(m, band):
    # grid (64, 32): 16 shells; 2D fft of a*sin(2*pi*m*i/nx), constant in j: |F(m, 0)| = a*nx*ny/2,
    # so E_m = a/2 after dividing by nx*ny; low band has 4 shells, mid 8, high 4
    nx, ny = 64, 32
    x = torch.arange(nx, dtype=torch.float64) / nx
    sine = A * torch.sin(2 * math.pi * m * x)[:, None].expand(nx, ny).reshape(1, 1, nx * ny, 1)
    y = torch.randn(2, 1, nx * ny, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    res = pdebench_metrics(y + sine, y, (nx, ny))
    width = {"low": 4, "mid": 8}[band]
    for b in ("low", "mid", "high"):
        assert res[f"frmse_{b}"] == pytest.approx(A / 2 / width if b == band else 0.0, abs=1e-12), b


def test_frmse_empty_band_is_nan():
    # grid (8, 8) has only 4 shells: the mid and high bands are empty
    y = torch.zeros(1, 1, 64, 1, dtype=torch.float64)
    res = pdebench_metrics(y + 1, y, (8, 8))
    assert math.isfinite(res["frmse_low"]) and math.isnan(res["frmse_mid"]) and math.isnan(res["frmse_high"])


def test_brmse_boundary_vs_interior():
    # 1D, 8 points: error 2 at x_0 only -> sqrt((4 + 0) / 2); interior error only -> 0
    y = torch.zeros(1, 1, 8, 1, dtype=torch.float64)
    p = y.clone()
    p[0, 0, 0, 0] = 2
    assert pdebench_metrics(p, y, (8,))["brmse"] == pytest.approx(math.sqrt(2))
    p = y.clone()
    p[0, 0, 3, 0] = 2
    assert pdebench_metrics(p, y, (8,))["brmse"] == 0.0
    # 2D grid (4, 5): error 1 at (1, 0) (flat index 5, on the j = 0 face) -> sqrt(1 / (2*4 + 2*5));
    # at the corner (0, 0) it lies on two faces -> sqrt(2 / 18); on all interior points -> 0 though rmse > 0
    y = torch.zeros(1, 1, 20, 1, dtype=torch.float64)
    p = y.clone()
    p[0, 0, 5, 0] = 1
    assert pdebench_metrics(p, y, (4, 5))["brmse"] == pytest.approx(math.sqrt(1 / 18))
    p = y.clone()
    p[0, 0, 0, 0] = 1
    assert pdebench_metrics(p, y, (4, 5))["brmse"] == pytest.approx(math.sqrt(2 / 18))
    p = y.clone().view(1, 1, 4, 5, 1)
    p[:, :, 1:-1, 1:-1] = 1
    res = pdebench_metrics(p.reshape(1, 1, 20, 1), y, (4, 5))
    assert res["brmse"] == 0.0 and res["rmse"] > 0
    # 3D grid (3, 4, 5): error 1 at (0, 1, 2), on one x face -> sqrt(1 / (2 * (12 + 20 + 15)))
    y = torch.zeros(1, 1, 60, 1, dtype=torch.float64)
    p = y.clone()
    p[0, 0, 1 * 5 + 2, 0] = 1
    assert pdebench_metrics(p, y, (3, 4, 5))["brmse"] == pytest.approx(math.sqrt(1 / 94))


def test_crmse_zero_mean_perturbation_and_pooling():
    y = torch.randn(2, 1, 8, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    zero_mean = field([1, -1, 2, -2, 0.5, -0.5, 3, -3]).view(1, 1, 8, 1)
    res = pdebench_metrics(y + zero_mean, y, (8,))
    assert res["crmse"] == pytest.approx(0.0, abs=1e-12) and res["rmse"] > 1
    # constant offsets 1 and 3: sum error = 8 and 24 -> /N = 1 and 3; pooled root sqrt((1 + 9) / 2), not 2
    offs = field([1, 3]).view(2, 1, 1, 1)
    assert pdebench_metrics(y + offs, y, (8,))["crmse"] == pytest.approx(math.sqrt(5))


def assert_same(a, b):
    """Two finalize() dicts agree (NaN == NaN for empty fRMSE bands)."""
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12, nan_ok=True), k


def _random(b, seed, t=3, p=64, c=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, p, c, generator=g), torch.randn(b, t, p, c, generator=g)


def test_decomposable_and_padding_ignored():
    grid = (26, 28)  # 13 shells: every band non-empty
    p, y = _random(6, 4, p=26 * 28)
    whole = pdebench_metrics(p, y, grid)
    split = MetricSums(2, 3)
    split.update(p[:2], y[:2], grid)
    split.update(p[2:], y[2:], grid)
    assert_same(split.finalize(), whole)
    # two "ranks": add the states, max the max_err
    r0, r1 = MetricSums(2, 3, grid=grid), MetricSums(2, 3, grid=grid)
    r0.update(p[:4], y[:4], grid)
    r1.update(p[4:], y[4:], grid)
    r0.load_state(r0.state() + r1.state())
    r0.max_err = torch.maximum(r0.max_err, r1.max_err)
    assert_same(r0.finalize(), whole)
    # padding with weight 0 (huge and NaN values) changes nothing
    pad_p, pad_y = _random(2, 5, p=26 * 28)
    pad_p[0] = 1e6
    pad_y[1] = float("nan")
    padded = MetricSums(2, 3)
    padded.update(torch.cat([p, pad_p]), torch.cat([y, pad_y]), grid, weight=torch.tensor([1.0] * 6 + [0.0] * 2))
    assert_same(padded.finalize(), whole)


def _pdebench_reference(pred, target):
    """A direct, batch-mean form of the definitions in shared/pdebench_format.md §4 (1D/2D, L = 1), inputs
    (B, X.., T, C): an independent oracle for the decomposable per-sample sums."""
    nd = pred.dim() - 3
    perm = (0, nd + 2) + tuple(range(1, nd + 2))
    pred, target = pred.permute(perm), target.permute(perm)
    nb, nc, nt = target.shape[0], target.shape[1], target.shape[-1]
    pv, tv = pred.reshape(nb, nc, -1, nt), target.reshape(nb, nc, -1, nt)
    err_mean = torch.sqrt(torch.mean((pv - tv) ** 2, dim=2))
    out = {"rmse": err_mean.mean(0), "nrmse": (err_mean / torch.sqrt(torch.mean(tv**2, dim=2))).mean(0)}
    out["crmse"] = torch.sqrt(torch.mean((pv.sum(2) - tv.sum(2)) ** 2, dim=0)) / pv.shape[2]
    out["max"] = torch.abs(pv - tv).max(2)[0].max(0)[0]
    if nd == 1:
        bd = (pred[:, :, 0] - target[:, :, 0]) ** 2 + (pred[:, :, -1] - target[:, :, -1]) ** 2
        out["brmse"] = torch.sqrt(bd / 2.0).mean(0)
        nx = pred.shape[2]
        err_f = (
            torch.sqrt(torch.mean(torch.abs(torch.fft.rfft(pred, dim=2) - torch.fft.rfft(target, dim=2)) ** 2, dim=0))
            / nx
        )
    else:
        nx, ny = pred.shape[2:4]
        bx = (pred[:, :, 0] - target[:, :, 0]) ** 2 + (pred[:, :, -1] - target[:, :, -1]) ** 2
        by = (pred[:, :, :, 0] - target[:, :, :, 0]) ** 2 + (pred[:, :, :, -1] - target[:, :, :, -1]) ** 2
        out["brmse"] = torch.sqrt((bx.sum(-2) + by.sum(-2)) / (2 * nx + 2 * ny)).mean(0)
        f = torch.abs(torch.fft.fftn(pred, dim=[2, 3]) - torch.fft.fftn(target, dim=[2, 3])) ** 2
        shells = torch.zeros(nb, nc, min(nx // 2, ny // 2), nt, dtype=pred.dtype)
        for i in range(nx // 2):
            for j in range(ny // 2):
                it = math.floor(math.sqrt(i**2 + j**2))
                if it > min(nx // 2, ny // 2) - 1:
                    continue
                shells[:, :, it] += f[:, :, i, j]
        err_f = torch.sqrt(shells.mean(0)) / (nx * ny)
    for name, lo, hi in (("frmse_low", 0, 4), ("frmse_mid", 4, 12), ("frmse_high", 12, None)):
        out[name] = err_f[:, lo:hi].mean(1)
    return {k: v.mean().item() for k, v in out.items()}


@pytest.mark.parametrize("grid", [(40,), (30, 28)])
def test_single_batch_matches_the_batch_mean_definitions(grid):
    # on one batch (no padding) the per-sample-sum form equals the batch-mean form exactly
    p, y = _random(3, 6, t=2, p=math.prod(grid))
    p, y = p.double(), y.double()
    ours = pdebench_metrics(p, y, grid)

    def to_pdebench(x):  # (B, T, P, C) -> (B, X.., T, C)
        return x.reshape(3, 2, *grid, 2).movedim(1, -2)

    ref = _pdebench_reference(to_pdebench(p), to_pdebench(y))
    for name in METRICS:
        assert ours[name] == pytest.approx(ref[name], rel=1e-9), name
