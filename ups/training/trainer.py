"""The training loop, shared by every stage and every parallel layout.

One optimizer step = ``accum_steps`` micro-batches on every rank. Decisions that change control
flow (skip a step, stop) are agreed across ranks before anyone acts on them.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from ups.data.datasets import MultiTaskDataset, TrajectoryDataset, WindowDataset
from ups.data.sampler import MultiTaskDistributedSampler
from ups.data.tasks import TaskData
from ups.distributed.collectives import all_reduce_sum, any_rank
from ups.distributed.env import DistEnv
from ups.evaluation.evaluate import evaluate
from ups.training.callbacks import Callback
from ups.training.checkpoint import Checkpointer, rng_state, set_rng_state
from ups.training.objective import predict_next
from ups.training.optim import build_optimizer, build_scheduler, set_requires_grad
from ups.training.stages import module_groups

log = logging.getLogger(__name__)


class Trainer:
    """Runs stages on a (possibly wrapped) model, with callbacks, checkpoints and resume."""

    def __init__(self, cfg: Any, model: nn.Module, raw_model: nn.Module, tasks: Sequence[TaskData], env: DistEnv,
                 device: torch.device, callbacks: Sequence[Callback], checkpointer: Checkpointer):
        self.cfg, self.model, self.raw_model, self.env, self.device = cfg, model, raw_model, env, device
        self.tasks, self.callbacks, self.checkpointer = list(tasks), list(callbacks), checkpointer
        self._steady = {t.name: t.family.steady for t in tasks}
        pre = cfg.data.preload_max_gb
        self.train_set = MultiTaskDataset([WindowDataset(t, "train", pre) for t in tasks])
        self.eval_sets = {split: [TrajectoryDataset(t, split, cfg.data.eval_samples, pre) for t in tasks]
                          for split in ("val", "test")}
        self.step = self.epoch = self.batches_done = 0
        self.total_steps = 0
        self.stage_name = ""
        self._stop_reason: str | None = None
        self.finished_stages: list[str] = []
        self.skipped_steps = 0
        self.epoch_losses: list[float] = []

    # -- helpers ---------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        bf16 = self.cfg.hardware.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after this step (callbacks call this; the loop agrees it across ranks)."""
        self._stop_reason = reason

    def _log(self, record: dict) -> None:
        for cb in self.callbacks:
            cb.on_log(self, record)

    def _micro_batches_per_epoch(self) -> int:
        t = self.cfg.trainer
        per_step = t.batch_size * self.env.world_size
        steps = t.steps_per_epoch or max(1, sum(self.train_set.sizes()) // (per_step * t.accum_steps))
        return steps * t.accum_steps  # whole optimizer steps, so accumulation never straddles epochs

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self, stage_done: bool = False) -> dict:
        sampler_state = self.sampler.state_dict()
        sampler_state["batches_done"] = self.batches_done  # consumed, not prefetched by the loader
        return {
            "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step, "epoch": self.epoch,
            "stage": self.stage_name, "stage_done": stage_done,
            "finished_stages": self.finished_stages + ([self.stage_name] if stage_done else []), "sampler": sampler_state, "rng": rng_state(),
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def _resume(self) -> bool:
        """Load the newest complete checkpoint of this stage; True if the stage had already finished."""
        path = self.checkpointer.latest() if self.cfg.trainer.resume else None
        if path is None:
            return False
        state = Checkpointer.load(path)
        self.finished_stages = list(state["finished_stages"])
        if state["stage"] != self.stage_name:
            return self.stage_name in self.finished_stages
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batches_done = state["step"], state["epoch"], state["sampler"]["batches_done"]
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        for cb, cb_state in zip(self.callbacks, state["callbacks"]):
            cb.load_state_dict(cb_state)
        log.info("resumed stage %s from %s at step %d", self.stage_name, path, self.step)
        return bool(state["stage_done"])

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, stage: Any) -> dict:
        """Train one stage to its step budget (or an agreed stop); return its last validation metrics."""
        t = self.cfg.trainer
        self.stage_name, self.total_steps = stage.name, stage.steps or t.max_steps
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
        if self._resume():
            log.info("stage %s already finished; skipping", stage.name)
            return self.evaluate("val")
        for cb in self.callbacks:
            cb.on_fit_start(self)
        metrics: dict = {}
        while self.step < self.total_steps and not self._agree_stop():
            metrics = self._run_epoch() or metrics
        if not metrics or metrics.get("step") != self.step:
            metrics = self._eval_and_log()
        self.checkpointer.save(self.state_dict(stage_done=True), "final")
        self.finished_stages.append(self.stage_name)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return metrics

    def _agree_stop(self) -> bool:
        stop = any_rank(self._stop_reason is not None, self.device)
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
        """Accumulate ``accum_steps`` micro-batches and step; return the step's mean loss (None at epoch end)."""
        t = self.cfg.trainer
        step_loss = torch.zeros((), device=self.device)
        n_samples = 0
        task_losses: dict[str, float] = {}
        for micro in range(t.accum_steps):
            batch = next(batches, None)
            if batch is None:
                return None
            self.batches_done += 1
            last = micro == t.accum_steps - 1
            # Skip the gradient all-reduce on all but the last micro-batch of a step.
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                with self.autocast():
                    loss, per_task, n = self._loss(batch)
                if any_rank(not torch.isfinite(loss).item(), self.device):
                    return self._skip("non-finite loss", window)
                (loss / t.accum_steps).backward()
            step_loss += loss.detach() / t.accum_steps
            n_samples += n
            for name, v in per_task.items():
                task_losses[name] = task_losses.get(name, 0.0) + v / t.accum_steps
        params = [p for p in self.raw_model.parameters() if p.requires_grad]
        clip = self.cfg.optim.grad_clip or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if any_rank(not torch.isfinite(grad_norm).item(), self.device):
            return self._skip("non-finite gradient norm", window)
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

    def _skip(self, reason: str, window: dict) -> float:
        """Drop the accumulated gradients of a step every rank agreed to skip."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        log.warning("step %d skipped on all ranks: %s", self.step, reason)
        return float("nan")

    def _loss(self, batch: list[dict]) -> tuple[torch.Tensor, dict[str, float], int]:
        """Sample-weighted MSE over the micro-batch's per-task groups, in normalised units."""
        total = torch.zeros((), device=self.device)
        n_all = sum(len(b["x"]) for b in batch)
        per_task = {}
        for b in batch:
            x, y = b["x"].to(self.device, non_blocking=True), b["y"].to(self.device, non_blocking=True)
            residual = self.cfg.trainer.residual and not self._steady[b["task"]]
            pred = predict_next(self.model, b["task"], x, b["coords"].to(self.device), b["cond"].to(self.device),
                                residual)
            loss = torch.nn.functional.mse_loss(pred, y)
            total = total + loss * (len(x) / n_all)
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
        self._log(record)
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
        self._log(record)
        log.info("step %d val nRMSE %s", self.step,
                 "  ".join(f"{k.split('/')[1]}={v:.4g}" for k, v in metrics.items()))
        for cb in self.callbacks:
            cb.on_eval_end(self, metrics)
        return record
