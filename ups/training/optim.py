"""AdamW with decoupled decay only on matrices, and a warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn


def build_optimizer(model: nn.Module, cfg: Any, lr: float | None, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; norms, biases and embeddings get no weight decay."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    decay = [p for n, p in params if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in params if not (p.ndim >= 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel is CUDA-only here; foreach is the fast path elsewhere.
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr or cfg.lr, betas=tuple(cfg.betas), fused=fused or None,
                             foreach=None if fused else True)


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier on the base learning rate at ``step``: linear warmup, then cosine or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(opt: torch.optim.Optimizer, cfg: Any, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose state (its step count) goes into checkpoints with the optimizer's."""
    warmup = min(cfg.warmup_steps, max(total_steps // 10, 1))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup, total_steps, cfg.schedule, cfg.min_lr_ratio))


def set_requires_grad(modules: Iterable[nn.Module], flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)
