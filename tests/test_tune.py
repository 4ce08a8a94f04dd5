"""The batch-size tuner: doubling then bisection finds the largest batch below an injected
out-of-memory threshold or a memory budget, keeps the margin, and writes a usable snippet."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from ups.training import batch_tuner as bt


@pytest.mark.parametrize("limit", [1, 5, 37, 64, 1000])
def test_search_finds_the_largest_batch_that_fits(limit: int) -> None:
    tried = []

    def try_batch(b: int) -> bt.Trial:
        tried.append(b)
        return bt.Trial(b, b <= limit, float(b))

    largest, trials = bt.search(try_batch, start=1, max_batch=512)
    assert largest == min(limit, 512)
    assert len(tried) == len(set(tried)) <= 2 * math.ceil(math.log2(512)) + 1  # no batch tried twice


def test_a_real_oom_error_counts_as_does_not_fit_and_others_propagate() -> None:
    def step(b: int) -> None:
        if b > 3:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        if b == 3:
            raise ValueError("a bug")

    cpu = torch.device("cpu")
    assert bt.measure(step, 2, cpu, budget_mb=1e9).fits
    assert not bt.measure(step, 4, cpu, budget_mb=1e9).fits
    with pytest.raises(ValueError):
        bt.measure(step, 3, cpu, budget_mb=1e9)
    assert not bt.measure(lambda b: None, 1, cpu, budget_mb=1.0).fits  # the process alone exceeds 1 MB


def test_margin_rounds_down() -> None:
    assert [bt.with_margin(b, 0.1) for b in (1, 9, 37, 64, 1000)] == [1, 8, 32, 56, 896]


def test_the_tuner_finds_a_batch_on_cpu_under_an_injected_limit(tiny_cfg, tmp_path) -> None:
    from ups.tune import tune

    cfg = tiny_cfg("task=advection1d", "tune.oom_above=37", "tune.steps=1", "tune.max_batch=256")
    result = tune(cfg)
    assert result["largest_fit"] == 37 and result["batch"] == 32
    snippet = OmegaConf.load(result["snippet"])
    assert snippet.trainer.batch_size == 32
    assert [t.batch for t in result["trials"]][:7] == [1, 2, 4, 8, 16, 32, 64]
