"""AdamW with decoupled decay only on matrices, and learning-rate schedules: warm-up, then cosine over
the steps (``cosine``), constant (``constant``), or cosine over the elapsed training time
(``cosine_time``), which reaches its floor exactly when ``trainer.time_budget_s`` is spent."""

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
    # The fused kernel runs on CUDA and CPU (on 2 CPU cores it took the optimizer step of `tiny` from
    # 11.2 to 6.3 ms, docs/benchmarks.md); foreach is the fast path elsewhere (MPS, ...).
    fused = cfg.fused if cfg.fused is not None else device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups, lr=lr or cfg.lr, betas=tuple(cfg.betas), fused=fused or None, foreach=None if fused else True
    )


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier on the base learning rate at ``step``: linear warmup, then cosine or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def time_lr_factor(step: int, warmup: int, elapsed_s: float, budget_s: float, min_ratio: float) -> float:
    """Multiplier at ``step`` after ``elapsed_s`` of a ``budget_s`` budget: a linear warm-up over steps that
    meets a cosine over time, which is ``min_ratio`` from the moment the budget is spent.

    The lower of the two, so a budget too short to finish the warm-up still ends on the floor."""
    warm = (step + 1) / max(1, warmup)
    progress = min(1.0, max(0.0, elapsed_s / budget_s))
    return min(warm, min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class TimeCosineLR(torch.optim.lr_scheduler.LRScheduler):
    """Warm-up, then cosine over elapsed training time (how many steps a budget buys is unknown).

    ``elapsed_s`` is set before each :meth:`step` (see :func:`advance`) and saved in the state
    dict; the trainer restores its own ``train_seconds`` on resume, so a resumed run continues the
    curve where it stopped.
    """

    def __init__(self, opt: torch.optim.Optimizer, warmup: int, budget_s: float, min_ratio: float):
        self.warmup, self.budget_s, self.min_ratio, self.elapsed_s = warmup, budget_s, min_ratio, 0.0
        super().__init__(opt)

    def get_lr(self) -> list[float]:
        f = time_lr_factor(self.last_epoch, self.warmup, self.elapsed_s, self.budget_s, self.min_ratio)
        return [base * f for base in self.base_lrs]

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue the saved position (steps, elapsed time) under the current config's warm-up, budget
        and floor, so that a resumed run with a raised ``trainer.time_budget_s`` stretches its curve."""
        config = self.warmup, self.budget_s, self.min_ratio
        super().load_state_dict(state_dict)
        self.warmup, self.budget_s, self.min_ratio = config


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: Any, total_steps: int, budget_s: float | None = None
) -> torch.optim.lr_scheduler.LRScheduler:
    """The configured schedule; its state (step count, and elapsed time for ``cosine_time``) goes
    into checkpoints with the optimizer's."""
    if cfg.schedule == "cosine_time":
        if budget_s is None:  # validate() refuses this at compose time; a direct caller gets it here
            raise ValueError("optim.schedule=cosine_time needs trainer.time_budget_s")
        return TimeCosineLR(opt, cfg.warmup_steps, budget_s, cfg.min_lr_ratio)
    warmup = min(cfg.warmup_steps, max(total_steps // 10, 1))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, warmup, total_steps, cfg.schedule, cfg.min_lr_ratio)
    )


def advance(scheduler: torch.optim.lr_scheduler.LRScheduler, elapsed_s: float) -> None:
    """Step the schedule after an optimizer step. A time-based one takes the training time the ranks
    agreed on, so every rank of a data-parallel run applies the same learning rate."""
    if isinstance(scheduler, TimeCosineLR):
        scheduler.elapsed_s = elapsed_s
    scheduler.step()


def set_requires_grad(modules: Iterable[nn.Module], flag: bool) -> None:
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(flag)
