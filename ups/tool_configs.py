"""Typed settings of the tools that run over the training config: ``python -m ups.tune`` (``tune.*``)
and ``python -m ups.bench`` (``bench.*``). Torch-free, like ups/config.py, so ``--help`` stays fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class TuneConfig:
    """``python -m ups.tune``: the batch-size search (ups/training/batch_tuner.py)."""

    start: int = 1  # first per-device batch tried; doubled until one does not fit
    max_batch: int = 4096
    margin: float = 0.1  # kept below the largest batch that fits, and below the memory budget
    memory_budget_gb: Optional[float] = None  # None: the GPU's memory; on CPU half the machine's
    steps: int = 2  # training steps per trial and task
    oom_above: Optional[int] = None  # tests: act as if any larger batch ran out of memory
    out: str = "tuned_batch.yaml"  # the snippet, relative to the run directory


@dataclass
class BenchConfig:
    """``python -m ups.bench``: the speed switches against the baseline (ups/bench/)."""

    variants: List[str] = field(
        default_factory=lambda: [
            "baseline",
            "bf16",
            "compile",
            "compile_step",
            "fused_adamw",
            "ac_every",
            "ac_every_2",
            "sdpa_flash",
            "sdpa_efficient",
            "sdpa_math",
            "preload",
            "workers",
            "frozen_encoder",
            "latent_cache",
            "all",
            "all_fp32",
        ]
    )
    warmup_steps: int = 3
    steps: int = 20  # per pass (real, split, loader only, model only)
    axis: Optional[str] = None  # a scaling run instead: batch | model | tasks | ranks
    points: List[str] = field(default_factory=list)  # the values along the axis (batch sizes, models, tasks)
    # The tables and plots go to the run directory; docs=docs/benchmarks.md (and plot_dir=docs) also
    # replace the section for this device kind there, which a plain run from a clone must not rewrite.
    docs: Optional[str] = None
    plot_dir: Optional[str] = None  # scaling plots; None: the run directory
