"""PDEBench's metrics (``models/metrics.py::metric_func``) as decomposable per-sample sums.

Definitions follow /work/shared/pdebench_format.md section 4, with Lx = Ly = Lz = 1, iLow = 4, iHigh = 12.
Deliberate differences from PDEBench:

- the caller passes predicted frames only, so conditioning frames never count (PDEBench 0.1.0 counts them);
- every sample weighs the same and the state is a sum over samples, so batches and ranks simply add up
  (PDEBench averages per-batch means and divides by n_batches - 1); the pooled roots of cRMSE and fRMSE,
  sqrt(mean_b ...), are kept but taken once, in ``finalize``, over all samples;
- nRMSE's norm is clamped at 1e-12, as ``ups.evaluation.metrics.nrmse`` (PDEBench divides by zero);
- 3D bRMSE stays per channel (PDEBench's 3D branch also sums the faces over channels, an indexing slip);
- an fRMSE band with no wavenumber on a small grid is NaN instead of an error.

Distributed use: ``all_reduce(state(), SUM)`` then ``load_state``, and ``all_reduce(max_err, MAX)``
separately, since a max does not add.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

METRICS = ("rmse", "nrmse", "crmse", "brmse", "frmse_low", "frmse_mid", "frmse_high", "max")
I_LOW, I_HIGH = 4, 12
EPS = 1e-12
_BANDS = (("frmse_low", 0, I_LOW), ("frmse_mid", I_LOW, I_HIGH), ("frmse_high", I_HIGH, None))


def nrmse_per_sample(pred: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(B, T, P, C) -> (B,): nRMSE per sample, channel and step (norm = target RMS over points), mean over C, T.

    Same formula as ``ups.evaluation.metrics.nrmse``, restated so this module imports nothing from training.
    """
    err = (pred - target).pow(2).mean(dim=2).sqrt()
    norm = target.pow(2).mean(dim=2).sqrt().clamp_min(eps)
    return (err / norm).mean(dim=(1, 2))


def n_wavenumbers(grid: tuple[int, ...]) -> int:
    """Wavenumbers fRMSE resolves: rfft's nx//2 + 1 in 1D; min(n//2) radial shells in 2D/3D (PDEBench)."""
    return grid[0] // 2 + 1 if len(grid) == 1 else min(n // 2 for n in grid)


@lru_cache(maxsize=None)
def _shells(grid: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions kept (mask over the quadrant 0 <= i < n/2, C order) and their shell floor(|(i, j, ..)|).

    Replaces PDEBench's Python loops over (i, j) by one index_add. float64 sqrt is correctly rounded,
    so perfect squares land exactly on their integer and the floor matches math.floor(math.sqrt()).
    """
    axes = torch.meshgrid(*[torch.arange(n // 2, dtype=torch.float64) for n in grid], indexing="ij")
    k = torch.stack(axes).pow(2).sum(0).sqrt().floor().long().flatten()
    keep = k < n_wavenumbers(grid)
    return keep, k[keep]


def _spectral_sq(d: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """(B, T, *grid, C) error -> (B, T, K, C) |F(p) - F(y)|^2 per wavenumber (1D) or shell (2D/3D).

    The FFT is linear, so F(p) - F(y) = F(p - y).
    """
    if len(grid) == 1:
        return torch.fft.rfft(d, dim=2).abs().pow(2)
    f = torch.fft.fftn(d, dim=tuple(range(2, 2 + len(grid)))).abs().pow(2)
    f = f[(slice(None), slice(None)) + tuple(slice(0, n // 2) for n in grid)].flatten(2, 1 + len(grid))
    keep, k = (t.to(d.device) for t in _shells(grid))
    out = d.new_zeros(d.shape[0], d.shape[1], n_wavenumbers(grid), d.shape[-1])
    return out.index_add_(2, k, f[:, :, keep])


def _boundary_mse(d2: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """(B, T, *grid, C) squared error -> (B, T, C): sum over the 2·ndim full faces / their total size.

    Faces overlap at edges and corners, which are counted once per face as in PDEBench and the spec
    (2D denominator 2nx + 2ny, 3D 2(nx·ny + ny·nz + nz·nx), 1D 2).
    """
    spatial = tuple(range(2, 2 + len(grid)))
    total, count = 0.0, 0
    for a, n in enumerate(grid):
        for idx in (0, n - 1):
            total = total + d2.narrow(2 + a, idx, 1).sum(dim=spatial)
        count += 2 * math.prod(grid) // n
    return total / count


class MetricSums:
    """Decomposable accumulator of PDEBench's metrics for one task (fixed channels, steps and grid).

    State: sample count, per-(step, channel) sums of RMSE, nRMSE, sqrt of the boundary MSE, squared
    conserved-sum error, per-wavenumber squared spectral error, plus ``max_err`` (T, C) reduced by MAX.
    """

    def __init__(self, channels: int, steps: int, device=None, grid: tuple[int, ...] | None = None):
        self.channels, self.steps, self.device = channels, steps, device
        self.n = torch.zeros(1, dtype=torch.float64, device=device)
        self.sums = torch.zeros(4, steps, channels, dtype=torch.float64, device=device)  # rmse nrmse crmse² brmse
        self.max_err = torch.zeros(steps, channels, dtype=torch.float64, device=device)
        self.grid, self.f_sq = None, None
        if grid is not None:  # lets every rank build an equal-sized state() before any update
            self._set_grid(tuple(grid))

    def _set_grid(self, grid: tuple[int, ...]) -> None:
        grid = tuple(int(n) for n in grid)
        if self.grid is None:
            if not 1 <= len(grid) <= 3:
                raise ValueError(f"grid must have 1 to 3 axes, got {grid}")
            self.grid = grid
            self.f_sq = torch.zeros(
                self.steps, n_wavenumbers(grid), self.channels, dtype=torch.float64, device=self.device
            )
        elif grid != self.grid:
            raise ValueError(f"grid {grid} differs from this task's {self.grid}")

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, grid, weight: torch.Tensor | None = None) -> None:
        """pred/target (B, T, P, C) in physical units, predicted frames only; weight (B,) 0/1, default ones."""
        self._set_grid(grid)
        b, t, p, c = pred.shape
        if target.shape != pred.shape or (t, c) != (self.steps, self.channels) or p != math.prod(self.grid):
            raise ValueError(
                f"pred {tuple(pred.shape)} / target {tuple(target.shape)} do not fit "
                f"steps={self.steps}, grid={self.grid}, channels={self.channels}"
            )
        if b == 0:
            return
        dev = self.n.device
        y = target.to(dev, torch.float64).reshape(b, t, *self.grid, c)  # float64: sums cross many batches
        d = pred.to(dev, torch.float64).reshape(b, t, *self.grid, c) - y
        w = torch.ones(b, dtype=torch.float64, device=dev) if weight is None else weight.to(dev, torch.float64)
        keep = w > 0
        spatial = tuple(range(2, 2 + len(self.grid)))

        def wsum(x):  # weighted sum over samples; where() so NaN/inf in padding cannot leak in
            shape = (b,) + (1,) * (x.dim() - 1)
            return (torch.where(keep.view(shape), x, 0.0) * w.view(shape)).sum(0)

        e = d.pow(2).mean(spatial).sqrt()  # (B, T, C)
        norm = y.pow(2).mean(spatial).sqrt().clamp_min(EPS)
        per = torch.stack([e, e / norm, d.sum(spatial).pow(2), _boundary_mse(d.pow(2), self.grid).sqrt()], 1)
        self.n += w[keep].sum()
        self.sums += wsum(per)
        self.f_sq += wsum(_spectral_sq(d, self.grid))
        amax = torch.where(keep.view((b,) + (1,) * (d.dim() - 1)), d.abs(), 0.0).amax(dim=(0,) + spatial)
        self.max_err = torch.maximum(self.max_err, amax)

    def state(self) -> torch.Tensor:
        """All additive sums as one flat float64 tensor (all_reduce with SUM). ``max_err`` is separate."""
        if self.f_sq is None:
            raise RuntimeError("grid unknown: pass grid= to MetricSums or update() first")
        return torch.cat([self.n, self.sums.flatten(), self.f_sq.flatten()])

    def load_state(self, t: torch.Tensor) -> None:
        """Inverse of ``state`` (e.g. after the SUM reduction)."""
        t = t.to(self.n.device, torch.float64)
        if t.numel() != self.state().numel():
            raise ValueError(f"state has {t.numel()} values, expected {self.state().numel()}")
        self.n = t[:1].clone()
        self.sums = t[1 : 1 + self.sums.numel()].view_as(self.sums).clone()
        self.f_sq = t[1 + self.sums.numel() :].view_as(self.f_sq).clone()

    def merge(self, other: "MetricSums") -> None:
        """In-process equivalent of the two reductions."""
        self.load_state(self.state() + other.state().to(self.n.device))
        self.max_err = torch.maximum(self.max_err, other.max_err.to(self.n.device))

    def finalize(self) -> dict:
        """Metric means over channels and steps (PDEBench style), per channel (``name/c``), nRMSE per step."""
        n = self.n.item()
        nan = torch.full((self.steps, self.channels), math.nan, dtype=torch.float64)
        if n <= 0 or self.grid is None:
            per = {m: nan for m in METRICS}
        else:
            size = math.prod(self.grid)
            per = {
                "rmse": self.sums[0] / n,
                "nrmse": self.sums[1] / n,
                "crmse": (self.sums[2] / n).sqrt() / size,
                "brmse": self.sums[3] / n,
                "max": self.max_err,
            }
            spec = (self.f_sq / n).sqrt() / size  # E[t, k, c]; L^ndim = 1
            k_max = spec.shape[1]
            for name, lo, hi in _BANDS:
                hi = k_max if hi is None else min(hi, k_max)
                per[name] = spec[:, lo:hi].mean(1) if hi > lo else nan
        out: dict = {}
        for m in METRICS:
            v = per[m].cpu()
            out[m] = v.mean().item()
            out.update({f"{m}/{c}": v[:, c].mean().item() for c in range(self.channels)})
        out["nrmse_t"] = per["nrmse"].cpu().mean(1).tolist()
        out["n_samples"] = int(round(n))
        return out


def pdebench_metrics(pred: torch.Tensor, target: torch.Tensor, grid) -> dict:
    """One batch's metrics: (B, T, P, C) predicted frames in physical units, spatial ``grid``."""
    sums = MetricSums(pred.shape[-1], pred.shape[1], device=pred.device, grid=tuple(grid))
    sums.update(pred, target, grid)
    return sums.finalize()
