"""What a stage trains on: windows holding as many target frames as its objective needs, or, with a
frozen encoder, that encoder's latents from the cache (encoded once, then read from disk)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from ups.data.datasets import MultiTaskDataset, WindowDataset
from ups.data.sampler import MultiTaskDistributedSampler
from ups.data.tasks import TaskData
from ups.distributed.collectives import main_first
from ups.distributed.env import DistEnv
from ups.distributed.parallelize import is_sharded
from ups.errors import ConfigError
from ups.models.spec import spec_of
from ups.objectives import Objective

log = logging.getLogger(__name__)


def fixed_batches(windows: MultiTaskDataset, device: torch.device, per_task: int = 32) -> list[dict]:
    """Up to ``per_task`` evenly spaced windows of each task, one batch per task on the device: the
    same on every rank, for :meth:`ups.objectives.Objective.setup`."""
    batches = []
    for t, n in enumerate(windows.sizes()):
        items = [windows[t, i] for i in range(0, n, max(1, n // per_task))][:per_task]
        batches += [
            {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in windows.collate(items)
        ]
    return batches


class TrainSets:
    """The training windows of every task, one set per horizon (built when first asked)."""

    def __init__(self, tasks: Sequence[TaskData], cfg: Any, env: DistEnv, device: torch.device, run_dir: Path):
        self.tasks, self.cfg, self.env, self.device, self.run_dir = list(tasks), cfg, env, device, Path(run_dir)
        self.preload_max_gb, self.copies = cfg.data.preload_max_gb, cfg.data.augment
        for t in self.tasks if self.copies and env.is_main else []:
            if (n := len(t.copies())) > 1:
                log.info("%s: training on %d copies of each sample (data.augment)", t.name, n)
        self.raw = MultiTaskDataset(
            [WindowDataset(t, "train", self.preload_max_gb, 1, self.copies) for t in self.tasks]
        )
        self._windows = {(1, i): d for i, d in enumerate(self.raw.datasets)}

    def windows(
        self, horizon: int | Mapping[str, int], where: str, applies: Callable[[bool], bool] | None = None
    ) -> MultiTaskDataset:
        """Windows with ``horizon`` target frames (one number, or by task name with 1 for the others)
        of the tasks the objective ``applies`` to (by steadiness; all by default); a horizon longer
        than the trajectories names ``where``."""
        if horizon == 1 and applies is None:
            return self.raw
        out = []
        for i, task in enumerate(self.tasks):
            if applies is not None and not applies(task.family.steady):
                continue
            h = horizon if isinstance(horizon, int) else horizon.get(task.name, 1)
            if (h, i) not in self._windows:
                try:
                    self._windows[h, i] = WindowDataset(task, "train", self.preload_max_gb, h, self.copies)
                except ValueError as err:
                    raise ConfigError(f"{where}.objective: {err}") from None
            out.append(self._windows[h, i])
        return MultiTaskDataset(out)

    def for_stage(self, name: str, stage: Any, objective: Objective, model: nn.Module) -> MultiTaskDataset:
        """The stage's windows, or its frozen encoder's cached latents (call once the weights are final:
        the cache key hashes them). ``model``: the unwrapped model (sharded in place under FSDP2)."""
        cfg, env = self.cfg, self.env
        windows = self.windows(objective.horizon, f"stages.{name}", objective.applies)
        latent = spec_of(model).latent  # the spec says which groups encoding runs; a frozen set caches
        if latent is None or not stage.latent_cache or not set(latent.groups) <= set(stage.freeze):
            return windows
        if objective.horizon != 1:
            raise ConfigError(
                f"stages.{name}: its objective trains on {objective.horizon} future frames per window (an unrolled "
                f"objective or a bundled model), which the latent cache does not keep; set stages.{name}.latent_cache=false"
            )
        if is_sharded(model):
            # The sharded encoder needs every rank in each forward; rank 0 alone cannot build the cache.
            log.info("stage %s: encoder sharded by FSDP2, encoding on the fly instead of caching", name)
            return windows
        from ups.data import latent_cache
        from ups.data.latent_dataset import MultiTaskLatentDataset

        root = Path(cfg.data.latent_cache_dir or self.run_dir / "latent_cache")
        with main_first(env.is_main):  # rank 0 builds what is missing, then everyone opens it
            cached = [
                latent_cache.load_or_build(model, w, root, self.device, build=env.is_main) for w in self.raw.datasets
            ]
        return MultiTaskLatentDataset(cached)


def stage_sampler(
    train_set: MultiTaskDataset,
    data_cfg: Any,
    batch_size: int,
    seed: int,
    num_replicas: int = 1,
    rank: int = 0,
    steps_per_epoch: int | None = None,
) -> MultiTaskDistributedSampler:
    """The sampler of a stage, as ``data_cfg.sampler`` says; its per-task weights are read by task name
    (a task the stage does not train on, e.g. a steady one, simply has none)."""
    s = data_cfg.sampler
    return MultiTaskDistributedSampler(
        train_set.sizes(),
        batch_size,
        num_replicas=num_replicas,
        rank=rank,
        strategy=s.strategy,
        temperature=s.temperature,
        weights=[float(s.weights.get(d.task.name, 1.0)) for d in train_set.datasets],
        mode=s.mode,
        seed=seed,
        steps_per_epoch=steps_per_epoch,
    )


def stage_loader(train_set: MultiTaskDataset, sampler: Any, data_cfg: Any, device: torch.device) -> DataLoader:
    """The loader of a stage. One for the whole stage, so its workers live across epochs instead of
    starting again each epoch; pinned memory makes the host-to-GPU copies asynchronous."""
    workers = data_cfg.num_workers
    return DataLoader(
        train_set,
        batch_sampler=sampler,
        collate_fn=train_set.collate,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        prefetch_factor=data_cfg.prefetch_factor if workers > 0 else None,
    )
