"""PDEBench's nRMSE per sample: the validation metric (the full set is in ``pdebench_metrics.py``)."""

from __future__ import annotations

import torch


def nrmse(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample nRMSE as PDEBench defines it (models/metrics.py).

    ``pred`` and ``target`` are (B, T, P, C) in physical units; the error is normalised per sample,
    channel and time step by the target's RMS over points, then averaged over channels and steps.
    """
    err = (pred - target).pow(2).mean(dim=2).sqrt()
    norm = target.pow(2).mean(dim=2).sqrt().clamp_min(eps)
    return (err / norm).mean(dim=(1, 2))
