"""The training loop, shared by every stage and every parallel layout.

One optimizer step = ``accum_steps`` micro-batches on every rank. Decisions that change control
flow (skip a step, stop) are agreed across ranks with :func:`any_rank` before anyone acts on them,
so no rank ever waits in a collective the others skipped.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict, set_model_state_dict,
                                                     set_state_dict)
from torch.utils.data import DataLoader

from ups.config import ConfigError
from ups.data.datasets import MultiTaskDataset, TrajectoryDataset, WindowDataset
from ups.data.sampler import MultiTaskDistributedSampler
from ups.data.tasks import TaskData
from ups.distributed.collectives import all_reduce_sum, any_rank, main_first
from ups.distributed.env import DistEnv
from ups.distributed.parallelize import grad_sync
from ups.evaluation.evaluate import evaluate
from ups.training.callbacks import Callback
from ups.training.checkpoint import Checkpointer, pack, rank_key, rng_state, set_rng_state, unpack
from ups.training.faults import FaultInjector
from ups.training.objective import predict_next
from ups.training.optim import build_optimizer, build_scheduler, set_requires_grad
from ups.training.stages import module_groups

log = logging.getLogger(__name__)


class StopTraining(RuntimeError):
    """Raised on every rank when the agreed policy for a failure is to stop."""


class Trainer:
    """Runs stages on a (possibly wrapped) model, with callbacks, checkpoints and resume."""

    def __init__(self, cfg: Any, model: nn.Module, raw_model: nn.Module, tasks: Sequence[TaskData], env: DistEnv,
                 device: torch.device, callbacks: Sequence[Callback], checkpointer: Checkpointer):
        self.cfg, self.model, self.raw_model, self.env, self.device = cfg, model, raw_model, env, device
        self.tasks, self.callbacks, self.checkpointer = list(tasks), list(callbacks), checkpointer
        self._steady = {t.name: t.family.steady for t in tasks}
        pre = cfg.data.preload_max_gb
        self.raw_train_set = MultiTaskDataset([WindowDataset(t, "train", pre) for t in tasks])
        self.train_set: MultiTaskDataset = self.raw_train_set
        self.eval_sets = {split: [TrajectoryDataset(t, split, cfg.data.eval_samples, pre) for t in tasks]
                          for split in ("val", "test")}
        self.faults = FaultInjector(cfg.faults, env)
        self.step = self.epoch = self.batches_done = self.total_steps = self.skipped_steps = 0
        self.stage_name = ""
        self.finished_stages: list[str] = []
        self.epoch_losses: list[float] = []
        self._stop_reason: str | None = None

    # -- helpers ---------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        bf16 = self.cfg.hardware.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after this step (callbacks call this; the loop agrees it across ranks)."""
        self._stop_reason = reason

    def log_record(self, record: dict) -> None:
        for cb in self.callbacks:
            cb.on_log(self, record)

    def _micro_batches_per_epoch(self) -> int:
        t = self.cfg.trainer
        per_step = t.batch_size * self.env.world_size
        steps = t.steps_per_epoch or max(1, sum(self.train_set.sizes()) // (per_step * t.accum_steps))
        return steps * t.accum_steps  # whole optimizer steps, so accumulation never straddles epochs

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self, stage_done: bool = False) -> dict:
        """Everything needed to continue exactly: DCP-shardable tensors plus packed bookkeeping."""
        model_sd, optim_sd = get_state_dict(self.raw_model, self.optimizer)
        trainer = {"step": self.step, "epoch": self.epoch, "stage": self.stage_name, "stage_done": stage_done,
                   "finished_stages": self.finished_stages + ([self.stage_name] if stage_done else []),
                   "sampler": self.sampler.state_dict(batches_done=self.batches_done),  # consumed, not prefetched
                   "scheduler": self.scheduler.state_dict(), "world_size": self.env.world_size,
                   "skipped_steps": self.skipped_steps, "epoch_losses": self.epoch_losses,
                   "config": OmegaConf.to_container(self.cfg, resolve=True)}
        return {"model": model_sd, "optim": optim_sd, "trainer": pack(trainer),
                "callbacks": {self._cb_key(i, cb): cb.state_dict() for i, cb in enumerate(self.callbacks)},
                rank_key(self.env.rank): pack(rng_state())}

    @staticmethod
    def _cb_key(index: int, cb: Callback) -> str:
        return f"{index}_{type(cb).__name__}"

    def _resume(self) -> bool:
        """Load the newest complete checkpoint; True if this stage had already finished.

        The weights always come back. Optimizer, scheduler, sampler position, callbacks and RNG
        come back only for the same stage: a new stage starts its own.
        """
        path = self.checkpointer.latest() if self.cfg.trainer.resume else None
        if path is None:
            return False
        saved = unpack(Checkpointer.load_into(path, {"trainer": b""})["trainer"])
        same = saved["stage"] == self.stage_name
        template = self.state_dict()
        if not same:
            template = {"model": template["model"]}
        own_rng = rank_key(self.env.rank)
        if same and own_rng not in Checkpointer.saved_keys(path):
            log.warning("checkpoint was saved by %d ranks and holds no RNG state for rank %d: continuing with "
                        "this rank's current RNG (the resumed run is not bit-identical)", saved["world_size"],
                        self.env.rank)
            template.pop(own_rng)
        state = Checkpointer.load_into(path, template)
        self.finished_stages = list(saved["finished_stages"])
        if not same:
            set_model_state_dict(self.raw_model, state["model"])
            log.info("stage %s starts from the weights of %s (stage %s)", self.stage_name, path, saved["stage"])
            return self.stage_name in self.finished_stages
        set_state_dict(self.raw_model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
        self.scheduler.load_state_dict(saved["scheduler"])
        try:
            self.sampler.load_state_dict(saved["sampler"])
        except ValueError as err:  # a layout that cannot continue this data order: the user's choice to make
            raise ConfigError(f"cannot resume from {path}: {err}") from None
        self.step, self.epoch = saved["step"], saved["epoch"]
        self.batches_done, self.skipped_steps = saved["sampler"]["batches_done"], saved["skipped_steps"]
        self.epoch_losses = list(saved["epoch_losses"])
        if own_rng in state and self.cfg.faults.restore_rng:
            set_rng_state(unpack(state[own_rng]))
        for i, cb in enumerate(self.callbacks):
            cb.load_state_dict(state["callbacks"][self._cb_key(i, cb)])
        log.info("resumed stage %s from %s at step %d", self.stage_name, path, self.step)
        return bool(saved["stage_done"])

    def _load_weights(self, path: str) -> None:
        """Start from another run's model weights (e.g. a trained encoder), not its training state."""
        state = Checkpointer.load_into(path, {"model": get_model_state_dict(self.raw_model)})
        set_model_state_dict(self.raw_model, state["model"])
        log.info("stage %s starts from the weights in %s", self.stage_name, path)

    def _train_set_for(self, stage: Any) -> MultiTaskDataset:
        """Windows from the data, or, with a frozen encoder, its latents from the cache (built once)."""
        if "encoder" not in stage.freeze or not stage.latent_cache:
            return self.raw_train_set
        if self.cfg.parallelism.strategy == "fsdp2":
            # The sharded encoder needs every rank in each forward; rank 0 alone cannot build the cache.
            log.info("stage %s: encoder sharded by FSDP2, encoding on the fly instead of caching", stage.name)
            return self.raw_train_set
        from ups.data import latent_cache

        root = Path(self.cfg.data.latent_cache_dir or Path(self.cfg.paths.output_dir) / "latent_cache")
        with main_first(self.env.is_main):  # rank 0 builds what is missing, then everyone opens it
            cached = [latent_cache.load_or_build(self.raw_model, w, root, self.device, build=self.env.is_main)
                      for w in self.raw_train_set.datasets]
        return latent_cache.MultiTaskLatentDataset(cached)

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, stage: Any) -> dict:
        """Train one stage to its step budget (or an agreed stop); return its last validation metrics."""
        t = self.cfg.trainer
        self.stage_name, self.total_steps = stage.name, stage.steps or t.max_steps
        # Each stage counts its own steps and epochs (records carry the stage name).
        self.step = self.epoch = self.batches_done = self.skipped_steps = 0
        self.epoch_losses = []
        groups = module_groups(self.raw_model)
        set_requires_grad([self.raw_model], True)
        set_requires_grad([groups[g] for g in stage.freeze], False)
        self.optimizer = build_optimizer(self.raw_model, self.cfg.optim, stage.lr, self.device)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.optim, self.total_steps)
        s = self.cfg.data.sampler
        self.sampler = MultiTaskDistributedSampler(
            self.train_set.sizes(), t.batch_size, num_replicas=self.env.world_size, rank=self.env.rank,
            strategy=s.strategy, temperature=s.temperature, mode=s.mode, seed=t.seed,
            steps_per_epoch=self._micro_batches_per_epoch())
        for cb in self.callbacks:
            cb.on_fit_start(self)  # before resume, so callback state exists to be loaded into
        if self._resume():
            log.info("stage %s already finished; skipping", stage.name)
            return self.evaluate("val")
        if stage.init_from and self.step == 0:
            self._load_weights(stage.init_from)
        self.train_set = self._train_set_for(stage)  # after the weights are final: the cache key hashes them
        metrics: dict = {}
        while self.step < self.total_steps and not self._agree_stop():
            metrics = self._run_epoch() or metrics
        if not metrics or metrics.get("step") != self.step:
            metrics = self._eval_and_log()
        self.checkpointer.save(self.state_dict(stage_done=True), "final", self.step, consolidate=True)
        self.finished_stages.append(self.stage_name)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return metrics

    def _agree_stop(self) -> bool:
        stop = any_rank(self._stop_reason is not None, device=self.device)
        if stop and self._stop_reason:
            log.info(self._stop_reason)
        return stop

    def _run_epoch(self) -> dict:
        t = self.cfg.trainer
        if self.batches_done == 0:
            self.sampler.set_epoch(self.epoch)
        loader = DataLoader(self.train_set, batch_sampler=self.sampler, collate_fn=self.train_set.collate,
                            num_workers=self.cfg.data.num_workers)
        batches, metrics = iter(loader), {}
        window = {"loss": 0.0, "samples": 0, "steps": 0, "t0": time.perf_counter(), "tasks": {}}
        epoch_sum = epoch_n = 0.0
        while self.step < self.total_steps:
            loss = self._optimizer_step(batches, window)
            if loss is None:  # the epoch's batches are used up
                break
            if loss == loss:  # a skipped step returns NaN and does not count
                epoch_sum, epoch_n = epoch_sum + loss, epoch_n + 1
                if self.step % t.log_every == 0 or self.step == self.total_steps:
                    self._log_train(window)
                if t.eval_every and self.step % t.eval_every == 0:
                    metrics = self._eval_and_log()
                self.faults.after_step(self.step)
            if self._agree_stop():
                break
        if epoch_n:
            self.epoch_losses.append(epoch_sum / epoch_n)
        if self.batches_done >= self._micro_batches_per_epoch():
            self.epoch, self.batches_done = self.epoch + 1, 0
            if not t.eval_every:
                metrics = self._eval_and_log()
        return metrics

    def _optimizer_step(self, batches: Any, window: dict) -> float | None:
        """Accumulate ``accum_steps`` micro-batches and step; the step's mean loss, NaN if skipped, None at epoch end."""
        t = self.cfg.trainer
        step_loss = torch.zeros((), device=self.device)
        n_samples, task_losses = 0, {}
        for micro in range(t.accum_steps):
            batch = next(batches, None)
            if batch is None:
                return None
            self.batches_done += 1
            # Gradients are all-reduced only on the last micro-batch of a step.
            with grad_sync(self.model, enabled=micro == t.accum_steps - 1):
                oom = False
                try:
                    self.faults.before_forward(self.step + 1)
                    with self.autocast():
                        loss, per_task, n = self._loss(batch)
                    loss = self.faults.corrupt_loss(self.step + 1, loss)
                except torch.OutOfMemoryError as err:
                    oom, loss = True, None
                    log.warning("rank %d: %s", self.env.rank, err)
                # Decided together before anyone starts backward, so no rank waits in a lone all-reduce.
                any_oom, any_nonfinite = any_rank(oom, not oom and not torch.isfinite(loss).item(),
                                                  device=self.device)
                if any_oom:
                    return self._skip_or_stop("out of memory in forward", t.on_oom)
                if any_nonfinite:
                    return self._skip_or_stop("non-finite loss", t.on_nonfinite)
                (loss / t.accum_steps).backward()
            step_loss += loss.detach() / t.accum_steps
            n_samples += n
            for name, v in per_task.items():
                task_losses[name] = task_losses.get(name, 0.0) + v / t.accum_steps
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.raw_model.parameters() if p.requires_grad],
                                                   self.cfg.optim.grad_clip or float("inf"))
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        if any_rank(not torch.isfinite(grad_norm).item(), device=self.device):
            return self._skip_or_stop("non-finite gradient norm", t.on_nonfinite)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        mean_loss = float(all_reduce_sum(step_loss[None])[0]) / self.env.world_size
        window["loss"] += mean_loss
        window["samples"] += n_samples * self.env.world_size
        window["steps"] += 1
        window["grad_norm"] = float(grad_norm)
        for name, v in task_losses.items():
            window["tasks"].setdefault(name, []).append(v)
        for cb in self.callbacks:
            cb.on_step_end(self)
        return mean_loss

    def _skip_or_stop(self, reason: str, policy: str) -> float:
        """Every rank reaches this together: drop the step's gradients, or stop the run."""
        self.optimizer.zero_grad(set_to_none=True)
        if policy == "stop":
            raise StopTraining(f"stopping at step {self.step + 1} on all ranks: {reason} (trainer policy 'stop')")
        self.skipped_steps += 1
        log.warning("step %d skipped on all ranks: %s", self.step + 1, reason)
        return float("nan")

    def _loss(self, batch: list[dict]) -> tuple[torch.Tensor, dict[str, float], int]:
        """Sample-weighted MSE over the micro-batch's per-task groups, in normalised units."""
        total = torch.zeros((), device=self.device)
        n_all = sum(len(b["y"]) for b in batch)
        per_task = {}
        for b in batch:
            b = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()}
            pred = predict_next(self.model, b, self.cfg.trainer.residual and not self._steady[b["task"]])
            loss = torch.nn.functional.mse_loss(pred, b["y"])
            total = total + loss * (len(b["y"]) / n_all)
            per_task[b["task"]] = float(loss.detach())
        return total, per_task, n_all

    def _log_train(self, window: dict) -> None:
        t = self.cfg.trainer
        if not window["steps"]:
            return
        elapsed = time.perf_counter() - window["t0"]
        record = {"step": self.step, "kind": "train", "stage": self.stage_name, "epoch": self.epoch,
                  "loss": window["loss"] / window["steps"], "samples_per_s": window["samples"] / max(elapsed, 1e-9),
                  "lr": self.scheduler.get_last_lr()[0], "grad_norm": window.get("grad_norm", float("nan")),
                  "batch_size": t.batch_size, "accum_steps": t.accum_steps, "world_size": self.env.world_size,
                  "global_batch": t.batch_size * t.accum_steps * self.env.world_size,
                  "skipped_steps": self.skipped_steps}
        record.update({f"loss/{k}": sum(v) / len(v) for k, v in window["tasks"].items()})
        self.log_record(record)
        window.update(loss=0.0, samples=0, steps=0, t0=time.perf_counter(), tasks={})

    def evaluate(self, split: str) -> dict:
        """Validation or test nRMSE per task, with the callbacks' evaluation weights (e.g. EMA)."""
        with contextlib.ExitStack() as stack:
            for cb in self.callbacks:
                stack.enter_context(cb.eval_weights(self))
            return evaluate(self.raw_model, self.eval_sets[split], self.device, self.autocast,
                            batch_size=self.cfg.trainer.batch_size, rank=self.env.rank,
                            world_size=self.env.world_size, residual=self.cfg.trainer.residual)

    def _eval_and_log(self) -> dict:
        metrics = self.evaluate("val")
        record = {"step": self.step, "kind": "eval", "stage": self.stage_name, "split": "val", **metrics}
        self.log_record(record)
        log.info("step %d val nRMSE %s", self.step,
                 "  ".join(f"{k.split('/')[1]}={v:.4g}" for k, v in metrics.items()))
        for cb in self.callbacks:
            cb.on_eval_end(self, metrics)
        return record
