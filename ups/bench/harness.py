"""Measure one configuration's training step the way the trainer runs it.

The pieces are the trainer's own: tasks, model, ``parallelize()``, the stage's training set (latent
cache included), the multi-task sampler and a DataLoader built like the trainer's, the objective's
loss (:func:`ups.training.step_totals.batch_loss`) and the optimizer. In order, after warm-up:

1. the real figure: ``steps`` steps fed by the loader, synchronised only at the ends;
2. the split: ``steps`` more with a device synchronisation between the parts (waiting for data,
   forward, backward, optimizer), whose sum is checked against the split pass's own wall time;
3. a validation loss on fixed validation windows (after the same number of steps for every variant);
4. the loader alone (batches moved to the device, no model) and the model alone (the real pass's
   batches put on the device first, then stepped on), to see whether the pipeline starves the model;
5. the work of the real pass (:meth:`Bench.work`): FLOPs and ops per step of each kind of batch it ran
   (one task's batch costs what its shapes cost), weighted by how many of each it ran. Each variant
   counts its own (a latent cache skips the encoder), so MFU divides each variant's own FLOPs; a
   compiled variant's ops are the kernels its step launches (``ups.bench.ops``), besides the eager
   count of the same step.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import torch
import torch._dynamo
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from ups.bench.flops import analytic_step_flops
from ups.bench.ops import OpCounter, count_ops, eager, record_compiled_kernels
from ups.build import build_compute, build_objectives, build_run, build_tasks, seed_everything
from ups.data.datasets import MultiTaskDataset, WindowDataset
from ups.data.sampler import MultiTaskDistributedSampler
from ups.distributed.env import DistEnv
from ups.distributed.parallelize import parallelize
from ups.models.spec import spec_of
from ups.training.compute import compile_counts, compile_report
from ups.training.optim import build_optimizer
from ups.training.step_totals import batch_loss, to_device
from ups.training.train_sets import fixed_batches, stage_loader, stage_sampler


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: torch's allocator statistics on CUDA, the resident-set high-water mark on Linux."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux >= 4.0)
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """The peak since :func:`reset_peak_memory`: allocated by torch on CUDA, resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _forever(loader: DataLoader, sampler: MultiTaskDistributedSampler) -> Iterator[list[dict]]:
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _to_device(batch: list[dict], device: torch.device) -> list[dict]:
    return [to_device(b, device) for b in batch]


class Bench:
    """One configuration, built as the trainer builds it, with timers around every start-up part."""

    def __init__(self, cfg: DictConfig, device: torch.device, work_dir: Path):
        self.cfg, self.device, self.startup = cfg, device, {}
        env = DistEnv()
        stage_name, stage = next(iter(cfg.stages.items()))
        objectives = build_objectives(cfg.stages, cfg.parallelism.strategy)
        compute = build_compute(cfg.hardware, env, device)
        seed_everything(cfg.trainer.seed)
        t0 = time.perf_counter()
        tasks = build_tasks(cfg, work_dir)
        self.startup["data_open_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # the trainer's builder and freezing rules (ups/build.py): what is measured is what trains
        built = build_run(cfg, work_dir, env, objectives=objectives, compute=compute, tasks=tasks, seed=False)
        self.tasks, self.raw, self.objective, self.context = (
            tasks,
            built.model,
            objectives[stage_name],
            compute.autocast,
        )
        sync(device)
        self.startup["model_build_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.model = parallelize(self.raw, cfg, env, device)
        self.startup["parallelize_s"] = time.perf_counter() - t0
        self.frozen = built.freeze(stage_name)
        t0 = time.perf_counter()
        sets = built.train_sets(env, work_dir)
        windows = sets.windows(self.objective.horizon, f"stages.{stage_name}", self.objective.applies)
        self.objective.setup(self.model, fixed_batches(windows, device))
        self.train_set = sets.for_stage(stage_name, stage, self.objective, self.raw)
        self.uses_latent_cache = type(self.train_set).__name__ == "MultiTaskLatentDataset"
        self.startup["train_set_s"] = time.perf_counter() - t0  # a latent cache is built here
        t = cfg.trainer
        self.sampler = stage_sampler(self.train_set, cfg.data, t.batch_size, t.seed)
        self.loader = stage_loader(self.train_set, self.sampler, cfg.data, device)
        self.batches = _forever(self.loader, self.sampler)
        self.optimizer = build_optimizer(self.raw, cfg.optim, stage.lr, device)
        self.val = [MultiTaskDataset([WindowDataset(task, "val", cfg.data.preload_max_gb)]) for task in self.tasks]

    # -- one step, in parts ------------------------------------------------------------------------
    def tokens_per_sample(self) -> float:
        """Latent tokens per sample, averaged over the run's tasks (the balanced sampler draws them
        equally); 1 for a model without a latent encoder."""
        latent = spec_of(self.raw).latent
        if latent is None:
            return 1.0
        return sum(latent.shape(self.raw, t.name)[0] for t in self.tasks) / len(self.tasks)

    def forward(self, batch: list[dict]) -> tuple[torch.Tensor, int]:
        with self.context():
            loss, _, n = batch_loss(self.objective, self.model, batch, self.device)
        return loss, n

    def update(self) -> None:
        params = [p for p in self.raw.parameters() if p.requires_grad]
        torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip or float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, batch: list[dict]) -> int:
        loss, n = self.forward(batch)
        loss.backward()
        self.update()
        return n

    # -- passes ------------------------------------------------------------------------------------
    def first_step(self) -> dict[str, float]:
        """The first batch and the first step (with compilation, when on), timed apart."""
        t0 = time.perf_counter()
        batch = next(self.batches)
        before = compile_counts()
        t1 = time.perf_counter()
        self.step(batch)
        sync(self.device)
        out = {"first_batch_s": t1 - t0, "first_step_s": time.perf_counter() - t1}
        if self.cfg.hardware.compile:
            self.compiled = compile_report(before, compile_counts(), reused=before["frames_ok"] > 0)
        return out

    def real(self, steps: int) -> tuple[float, int]:
        """Seconds and samples of ``steps`` loader-fed steps, synchronised only at the ends. Keeps the
        batches, so that the model-only pass steps on the same ones (one batch holds one task, and
        tasks differ in cost: other batches would make another mix, not another speed)."""
        self.replay: list[list[dict]] = []
        sync(self.device)
        t0, n = time.perf_counter(), 0
        for _ in range(steps):
            batch = next(self.batches)
            self.replay.append(batch)
            n += self.step(batch)
        sync(self.device)
        return time.perf_counter() - t0, n

    def split(self, steps: int) -> dict[str, float]:
        """Mean milliseconds per step of each part, and of the whole pass, with synchronisations between."""
        parts = {"data_ms": [], "forward_ms": [], "backward_ms": [], "optimizer_ms": []}
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            batch = _to_device(next(self.batches), self.device)
            sync(self.device)
            t1 = time.perf_counter()
            loss, _ = self.forward(batch)
            sync(self.device)
            t2 = time.perf_counter()
            loss.backward()
            sync(self.device)
            t3 = time.perf_counter()
            self.update()
            sync(self.device)
            t4 = time.perf_counter()
            for key, (a, b) in zip(parts, ((t0, t1), (t1, t2), (t2, t3), (t3, t4))):
                parts[key].append(1000 * (b - a))
        out = {k: statistics.fmean(v) for k, v in parts.items()}
        out["split_step_ms"] = 1000 * (time.perf_counter() - start) / steps
        return out

    def loader_only(self, steps: int) -> float:
        """Samples/s of the loader alone, batches moved to the device."""
        t0, n = time.perf_counter(), 0
        for _ in range(steps):
            batch = _to_device(next(self.batches), self.device)
            n += sum(len(b["y"]) for b in batch)
        sync(self.device)
        return n / (time.perf_counter() - t0)

    def model_only(self) -> float:
        """Samples/s of steps on the real pass's batches, all put on the device first: no data loading."""
        batches = [_to_device(batch, self.device) for batch in self.replay]
        sync(self.device)
        t0, n = time.perf_counter(), 0
        for batch in batches:
            n += self.step(batch)
        sync(self.device)
        return n / (time.perf_counter() - t0)

    @torch.no_grad()
    def val_loss(self, windows: int = 8) -> float:
        """The objective's mean loss on the first windows of each task's validation split."""
        losses = []
        for ds in self.val:
            items = [ds[(0, i)] for i in range(min(windows, len(ds.datasets[0])))]
            if items:
                losses.append(float(self.forward(ds.collate(items))[0]))
        return statistics.fmean(losses) if losses else float("nan")

    def work(self) -> dict[str, Any]:
        """FLOPs and ops of the real pass's steps: one step of each kind of batch it ran (same task,
        same shapes: same cost), weighted by how many of that kind it ran. Compiled blocks run eagerly
        for the FLOPs and the eager op count, so that the layer formulas' hooks and the counters see
        every operation; a compiled variant's ``ops_per_step`` is then counted on one more step as it
        runs (:func:`ups.bench.ops.count_ops`). Counting steps update the weights: call it after the
        timed passes."""
        kinds: dict[tuple, list] = {}
        for batch in self.replay:
            key = tuple(
                (b["task"], tuple((k, tuple(v.shape)) for k, v in sorted(b.items()) if torch.is_tensor(v)))
                for b in batch
            )
            kinds.setdefault(key, [batch, 0])[1] += 1
        flops = counted = 0.0
        launches, eager_launches, views = Counter(), Counter(), 0
        per_task: dict[str, dict[str, float]] = {}
        compiled = bool(self.cfg.hardware.compile)
        for batch, runs in kinds.values():
            batch = _to_device(batch, self.device)
            with eager():
                analytic = analytic_step_flops(
                    self.raw, lambda: batch_loss(self.objective, self.raw, batch, self.device)
                )
                with FlopCounterMode(display=False) as fc, OpCounter() as ops:
                    self.step(batch)
            sync(self.device)
            eager_launches.update({k: runs * v for k, v in ops.launches.items()})
            if compiled:  # what the compiled step launches: eager ops, extern calls, generated kernels
                ops = count_ops(lambda: self.step(batch), compiled=True)
                sync(self.device)
            flops, counted = flops + runs * analytic, counted + runs * fc.get_total_flops()
            launches.update({k: runs * v for k, v in ops.launches.items()})
            views += runs * sum(ops.views.values())
            task = "+".join(b["task"] for b in batch)
            row = per_task.setdefault(task, {"steps": 0, "samples": 0, "flops": 0.0, "ops": 0})
            row["steps"] += runs
            row["samples"] += runs * sum(len(b["y"]) for b in batch)
            row["flops"] += runs * analytic
            row["ops"] += runs * sum(ops.launches.values())
        steps = len(self.replay)
        samples = sum(len(b["y"]) for batch in self.replay for b in batch)
        return {
            "steps": steps,
            "samples": samples,
            "analytic": flops,
            "counted": counted,
            "flops_per_sample": flops / samples,
            "ops_per_step": sum(launches.values()) / steps,
            "eager_ops_per_step": sum(eager_launches.values()) / steps,
            "ops_compiled": compiled,
            "generated_kernels_per_step": sum(v for k, v in launches.items() if k.startswith("inductor:")) / steps,
            "views_per_step": views / steps,
            "top_ops": [(k, v / steps) for k, v in launches.most_common(8)],
            "per_task": per_task,
        }


def prepare_compile(cfg: DictConfig) -> None:
    """Before a compiled variant is built: its generated kernels record their launches (so that
    :meth:`Bench.work` can count them), and dynamo's cache is emptied. Compiled graphs outlive the
    model they were made for: a later compiled variant of the same process would reuse them (its first
    step 0.08 s instead of 40 s on a CPU) and show no compile time, or, compiled before the kernels
    recorded themselves, count none of them."""
    if cfg.hardware.compile:
        record_compiled_kernels()
        torch._dynamo.reset()


def measure(cfg: DictConfig, device: torch.device, warmup: int, steps: int, work: bool = False) -> dict[str, Any]:
    """Every figure of one configuration (see the module's docstring); ``work``: also count the real
    pass's FLOPs and ops (:meth:`Bench.work`)."""
    reset_peak_memory(device)
    prepare_compile(cfg)
    with tempfile.TemporaryDirectory(prefix="ups-bench-") as work:
        bench = Bench(cfg, device, Path(work))
        out: dict[str, Any] = {"startup": dict(bench.startup)}
        out["startup"].update(bench.first_step())
        for _ in range(warmup):
            bench.step(next(bench.batches))
        seconds, samples = bench.real(steps)
        # the raw figures too: two rows with the same seconds to the nanosecond are one measurement
        out.update(
            samples_per_s=samples / seconds,
            step_ms=1000 * seconds / steps,
            batch_samples=samples / steps,
            real_s=seconds,
            real_samples=samples,
            real_steps=steps,
        )
        out.update(bench.split(steps))
        out["startup"]["compile_s"] = (
            max(0.0, out["startup"]["first_step_s"] - out["step_ms"] / 1000) if cfg.hardware.compile else 0.0
        )
        out["val_loss"] = bench.val_loss()
        out["loader_samples_per_s"] = bench.loader_only(steps)
        out["model_samples_per_s"] = bench.model_only()
        out["peak_memory_mb"] = peak_memory_mb(device)
        out["latent_cache_used"] = bench.uses_latent_cache
        out["tokens_per_s"] = out["samples_per_s"] * bench.tokens_per_sample()
        if cfg.hardware.compile:
            out["compile"] = bench.compiled
        if work:
            out["work"] = bench.work()
        del bench  # the loader's workers exit before the folder goes
    out["parts_sum_ms"] = sum(out[k] for k in ("data_ms", "forward_ms", "backward_ms", "optimizer_ms"))
    if not math.isfinite(out["val_loss"]):
        out["val_loss"] = None
    return out
