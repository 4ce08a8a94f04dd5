"""The largest per-device batch that fits: an out-of-memory-safe search over real training steps.

A candidate batch is tried with a few full training steps (forward, backward, optimizer) of the
configured model, parallel layout aside, on real windows of every task (a batch holds one task
in ``data.sampler.mode=task``, so the task with the largest samples decides). Doubling finds the
first batch that does not fit, bisection the last that does; the safety margin is in the memory
budget (a batch fits when its peak stays that far below the memory), not taken off the batch again. On CUDA "does not fit" is an out-of-memory error or a peak above the device's memory
less the margin; on CPU, where running out of memory means swapping or the kernel's OOM killer,
it is a peak resident set above ``tune.memory_budget_gb``.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ups.data.datasets import MultiTaskDataset
from ups.training.failures import is_oom

log = logging.getLogger(__name__)


@dataclass
class Trial:
    batch: int
    fits: bool
    peak_mb: float
    why: str = ""


def _cpu_peak_mb(reset: bool) -> float:
    """The process's peak resident set (VmHWM) in MB, after resetting it when asked (Linux)."""
    if reset:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
        except OSError:
            pass
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    step: Callable[[int], None], batch: int, device: torch.device, budget_mb: float, oom_above: int | None = None
) -> Trial:
    """Run ``step(batch)`` and say whether it fitted within ``budget_mb`` (``oom_above``: injected limit)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _cpu_peak_mb(reset=True)
    try:
        if oom_above is not None and batch > oom_above:
            raise torch.OutOfMemoryError(f"injected: batch {batch} > tune.oom_above={oom_above}")
        step(batch)
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not is_oom(err):
            raise
        return Trial(batch, False, float("nan"), f"out of memory ({str(err).splitlines()[0][:80]})")
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _cpu_peak_mb(False)
    if peak > budget_mb:
        return Trial(batch, False, peak, f"peak {peak:.0f} MB above the budget of {budget_mb:.0f} MB")
    return Trial(batch, True, peak)


def search(try_batch: Callable[[int], Trial], start: int = 1, max_batch: int = 4096) -> tuple[int, list[Trial]]:
    """Doubling from ``start``, then bisection: the largest batch that fits (0 if none), and every trial."""
    trials: list[Trial] = []
    good, bad, b = 0, None, start
    while b <= max_batch:
        trials.append(try_batch(b))
        if not trials[-1].fits:
            bad = b
            break
        good, b = b, b * 2
    if bad is None:
        return good, trials
    while bad - good > 1:
        mid = (good + bad) // 2
        trials.append(try_batch(mid))
        good, bad = (mid, bad) if trials[-1].fits else (good, mid)
    return good, trials


def training_step(
    model: nn.Module,
    sets: MultiTaskDataset,
    objective: Any,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    autocast: Callable,
    steps: int = 2,
) -> Callable[[int], None]:
    """``step(batch)``: ``steps`` optimizer steps on ``batch`` windows of each task in turn."""

    def step(batch: int) -> None:
        for t, n in enumerate(sets.sizes()):
            items = [sets[t, i % n] for i in range(batch)]
            (b,) = sets.collate(items)
            b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                with autocast():
                    loss = objective.loss(model, b)
                loss.backward()
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def budget_mb(device: torch.device, memory_budget_gb: float | None, margin: float) -> float:
    """The memory a batch may use: the device's memory (CUDA) or ``memory_budget_gb`` (CPU; default:
    half the machine's memory), less the margin."""
    if memory_budget_gb is not None:
        total = memory_budget_gb * 1024
    elif device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**20
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 / 2
    return total * (1.0 - margin)


def describe(trials: Sequence[Trial]) -> str:
    """One line per trial, for the log."""
    return "\n".join(
        f"  batch {t.batch:>5}: {'fits' if t.fits else 'does not fit'}"
        + (f", peak {t.peak_mb:.0f} MB" if t.peak_mb == t.peak_mb else "")
        + (f" ({t.why})" if t.why else "")
        for t in trials
    )
