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


def test_the_tuner_finds_a_batch_on_cpu_under_an_injected_limit(tiny_cfg, tmp_path) -> None:
    from ups.tune import tune

    cfg = tiny_cfg("task=advection1d", "tune.oom_above=37", "tune.steps=1", "tune.max_batch=256")
    result = tune(cfg)
    # the margin is in the memory budget only: the largest batch that fits is the answer (it was taken
    # off again before, 37 -> 32, the margin applied twice)
    assert result["largest_fit"] == 37 and result["batch"] == 37
    snippet = OmegaConf.load(result["snippet"])
    assert snippet.trainer.batch_size == 37
    assert [t.batch for t in result["trials"]][:7] == [1, 2, 4, 8, 16, 32, 64]


def test_the_tuner_measures_with_activation_checkpointing_when_training_uses_it(tiny_cfg, monkeypatch) -> None:
    """A step's memory depends on activation checkpointing: the tuner applies it as training does."""
    import ups.distributed.parallelize as par
    from ups.tune import tune

    calls = []
    real = par.apply_ac
    monkeypatch.setattr(par, "apply_ac", lambda model, every=1: (calls.append(every), real(model, every)))
    tune(tiny_cfg("task=advection1d", "tune.oom_above=4", "tune.steps=1", "hardware.activation_checkpointing=true"))
    assert calls == [1]
