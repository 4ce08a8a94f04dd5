"""PDEBench's nRMSE, and autoregressive rollouts to compute it."""
from __future__ import annotations

import torch
from torch import nn

from ups.training.objective import predict_next


def nrmse(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample nRMSE as PDEBench defines it (models/metrics.py).

    ``pred`` and ``target`` are (B, T, P, C) in physical units; the error is normalised per sample,
    channel and time step by the target's RMS over points, then averaged over channels and steps.
    """
    err = (pred - target).pow(2).mean(dim=2).sqrt()
    norm = target.pow(2).mean(dim=2).sqrt().clamp_min(eps)
    return (err / norm).mean(dim=(1, 2))


@torch.no_grad()
def rollout(model: nn.Module, task: str, traj: torch.Tensor, cond: torch.Tensor, coords: torch.Tensor,
            initial_step: int, residual: bool) -> torch.Tensor:
    """Predict frames ``initial_step..T-1`` from the first ``initial_step`` true frames.

    ``traj`` is (B, T, P, C), normalised. Each prediction joins the context window for the next,
    PDEBench's autoregressive protocol. Returns (B, T - initial_step, P, C).
    """
    b, t, p, c = traj.shape
    window, preds = traj[:, :initial_step], []
    for _ in range(initial_step, t):
        x = window.permute(0, 2, 1, 3).reshape(b, p, -1)  # (B, P, k*C), time outermost per point
        y = predict_next(model, {"task": task, "x": x, "coords": coords, "cond": cond}, residual)
        preds.append(y)
        window = torch.cat([window[:, 1:], y[:, None]], dim=1)
    return torch.stack(preds, dim=1)
