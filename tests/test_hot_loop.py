"""The lean hot loop: outside logging steps an optimizer step costs at most one device-to-host sync
and one collective (skip flags, stop flags, the loss sums and the per-task losses travel together);
ups/training/step_totals.py. Before it, a step cost 5 syncs and 4 collectives (6 and 5 with two
micro-batches)."""

from __future__ import annotations

import contextlib
import sys
from collections import Counter

import pytest
import torch

from ups.distributed import collectives
from ups.runner import run
from ups.training import micro_batch, step_totals
from ups.training.callbacks import Callback

# Every way a tensor's value reaches Python: each one waits for the device on a GPU.
SYNCS = ("item", "tolist", "__float__", "__int__", "__bool__")


@contextlib.contextmanager
def counting(monkeypatch: pytest.MonkeyPatch, counts: Counter):
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _original=original, _name=name, **kw):
            # Ours only: torch's own CPU-side reads (AdamW's step counters live on the CPU) wait for nothing.
            if "/ups/" in sys._getframe(1).f_code.co_filename:
                counts[_name] += 1
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    for module, name, kind in (
        (step_totals, "all_reduce_sum", "collective"),
        (micro_batch, "any_rank_on_host", "host agreement"),
    ):
        original = getattr(collectives, name)

        def wrapped_collective(*a, _original=original, _kind=kind, **kw):
            counts[_kind] += 1
            return _original(*a, **kw)

        monkeypatch.setattr(module, name, wrapped_collective)
    yield


class StepCounts(Callback):
    """Snapshots of the counters at every step's end: their differences are one step's cost."""

    def __init__(self, counts: Counter):
        self.counts, self.snapshots, self.records = counts, [], []

    def on_step_end(self, trainer) -> None:
        self.snapshots.append(Counter(self.counts))

    def on_log(self, trainer, record: dict) -> None:
        self.records.append(record)


@pytest.mark.parametrize("accum", [1, 2])
def test_a_step_costs_one_sync_and_one_collective(tiny_cfg, monkeypatch, accum: int) -> None:
    cfg = tiny_cfg(
        "task=pdebench2",
        "trainer.max_steps=12",
        "trainer.log_every=1000",
        "trainer.eval_every=null",
        "trainer.steps_per_epoch=100",
        f"trainer.accum_steps={accum}",
        "trainer.batch_size=4",
    )
    counts = Counter()
    probe = StepCounts(counts)
    monkeypatch.setattr("ups.runner.build_callbacks", lambda c: {"probe": probe})
    with counting(monkeypatch, counts):
        run(cfg)
    # the run's start-up split, logged once, at its first step: its parts add up to the whole
    (startup,) = [r for r in probe.records if r["kind"] == "startup"]
    parts = [v for k, v in startup.items() if k.endswith("_s")]
    assert startup["step"] == 1 and len(parts) == 5 and abs(sum(parts) - startup["seconds"]) < 0.05
    steps = [b - a for a, b in zip(probe.snapshots[1:], probe.snapshots[2:])]  # steady state
    assert len(steps) == 10
    for cost in steps:
        syncs = sum(cost[n] for n in SYNCS)
        assert syncs <= 1 and cost["collective"] <= 1, dict(cost)
        # out-of-memory in forward is agreed per micro-batch, on host memory (no device sync)
        assert cost["host agreement"] == accum, dict(cost)
