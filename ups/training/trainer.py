"""The training loop, shared by every stage, objective, model family and parallel layout.

One optimizer step = ``accum_steps`` micro-batches on every rank. Decisions that change control
flow (skip a step, stop) are agreed across ranks before anyone acts on them, so no rank ever waits
in a collective the others skipped: out-of-memory in forward per micro-batch on host memory
(``micro_batch.py``), the rest in the step's one reduction (``step_totals.py``), its only host sync.
What a step optimises is the stage's objective (``ups/objectives/``); which modules a stage may
freeze, the model's spec says.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.utils.data import DataLoader

from ups.data.datasets import MultiTaskDataset, TrajectoryDataset
from ups.distributed.env import DistEnv
from ups.evaluation.evaluate import evaluate
from ups.models.spec import spec_of
from ups.objectives import Objective
from ups.training import resume, signals
from ups.training.callbacks import Callback
from ups.training.checkpoint import Checkpointer
from ups.training.failures import check_batch_fits, skip_or_stop
from ups.training.loggers import TrainWindow
from ups.training.micro_batch import forward_backward
from ups.training.optim import advance, build_optimizer, build_scheduler
from ups.training.state import TrainerState
from ups.training.step_totals import Agreed, StepTotals, agree_stop
from ups.training.train_sets import fixed_batches, stage_loader, stage_sampler

if TYPE_CHECKING:
    from ups.build import BuiltRun

log = logging.getLogger(__name__)


def _from_state(name: str, doc: str) -> property:
    """A read-only trainer attribute that reads ``trainer.state.<name>`` (callbacks read the trainer)."""
    return property(lambda self: getattr(self.state, name), doc=doc)


class Trainer:
    """Runs a pipeline of stages on a (possibly wrapped) model, with callbacks, checkpoints and resume.

    Each stage checkpoints into ``<run_dir>/checkpoints/<stage>/`` and counts its own steps; records
    carry one global step that increases across stages (``step``) besides the stage's (``stage_step``).
    """

    def __init__(
        self,
        cfg: Any,
        model: nn.Module,
        built: "BuiltRun",
        env: DistEnv,
        callbacks: Mapping[str, Callback],
        run_dir: str | Path,
    ):
        """``model``: the wrapped (parallelized) ``built.model``; everything else comes from ``built``
        (``ups/build.py``): tasks, each stage's objective, the device and autocast."""
        self.cfg, self.model, self.raw_model, self.env = cfg, model, built.model, env
        self.built, self.device, self.compute = built, built.device, built.compute
        self.tasks, self.callbacks, self.run_dir = list(built.tasks), dict(callbacks), Path(run_dir)
        self.spec = spec_of(self.raw_model)
        tasks, pre = self.tasks, cfg.data.preload_max_gb
        self.train_sets = built.train_sets(env, self.run_dir)
        self.train_set: MultiTaskDataset = self.train_sets.raw
        self.eval_sets = {
            split: [TrajectoryDataset(t, split, cfg.data.eval_samples, pre) for t in tasks] for split in ("val", "test")
        }
        self.state = TrainerState()  # every counter; checkpointed through its own state_dict
        self.objective: Objective | None = None
        self.checkpointer: Checkpointer | None = None
        self.loader: DataLoader | None = None  # the current stage's (its workers live for the stage)

    # -- what callbacks read (the counters live in self.state) -----------------------------------
    global_step = _from_state("global_step", "Optimizer steps done over all stages so far.")
    step = _from_state("step", "Optimizer steps of the current stage.")
    epoch = _from_state("epoch", "Epochs of the current stage so far.")
    stage_name = _from_state("stage", "The current (or last) stage's name.")
    total_steps = _from_state("total_steps", "The current stage's step budget.")
    last_loss = _from_state("last_loss", "The last optimizer step's loss.")
    epoch_losses = _from_state("epoch_losses", "Mean train loss of each finished epoch of the current (or last) stage.")

    @property
    def train_seconds(self) -> float:
        """Training wall-clock so far, across resumes."""
        return self.state.elapsed_s()

    # -- helpers ---------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward passes' context: bf16 autocast and the attention backend, as configured."""
        return self.compute.autocast()

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after this step (callbacks call this; the loop agrees it across ranks)."""
        self.state.stop_reason = reason

    def log_record(self, record: dict) -> None:
        for cb in self.callbacks.values():
            cb.on_log(self, record)

    def _record(self, kind: str, **fields: Any) -> dict:
        return {"step": self.global_step, "stage_step": self.step, "kind": kind, "stage": self.stage_name, **fields}

    def _micro_batches_per_epoch(self) -> int:
        t = self.cfg.trainer
        per_step = t.batch_size * self.env.world_size
        steps = t.steps_per_epoch or max(1, sum(self.train_set.sizes()) // (per_step * t.accum_steps))
        return steps * t.accum_steps  # whole optimizer steps, so accumulation never straddles epochs

    # -- the pipeline --------------------------------------------------------------------------
    def run_stages(self, stages: Mapping[str, Any]) -> dict:
        """Run the stages in order; each resumes where it stopped or is skipped when finished.

        A stage starts from ``init_from`` if set, else from the previous stage's final weights.
        Returns the last stage's final validation record.
        """
        prev, metrics = None, {}
        for name, stage in stages.items():
            if stage.steps == 0:
                log.info("stage %s: steps=0, skipped", name)
                continue
            metrics = self.fit(name, stage, prev)
            prev = self.checkpointer.root / "final"
        return metrics

    def start_run(self) -> None:
        for cb in self.callbacks.values():
            cb.on_run_start(self)

    def end_run(self) -> None:
        for cb in self.callbacks.values():
            cb.on_run_end(self)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self, stage_done: bool = False) -> dict:
        """Everything needed to continue exactly (``ups/training/resume.py``)."""
        return resume.trainer_state(self, stage_done)

    def _resume(self) -> bool:
        return resume.resume_stage(self)

    def _load_weights(self, path: str | Path) -> None:
        """Start from a checkpoint's model weights (a previous stage or another run), not its training state."""
        state = Checkpointer.load_into(
            path,
            {"model": get_model_state_dict(self.raw_model)},
            self.cfg.trainer.get("allow_unverified_checkpoints", False),
        )
        set_model_state_dict(self.raw_model, state["model"])
        log.info("stage %s starts from the weights in %s", self.stage_name, path)

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, name: str, stage: Any, prev: str | Path | None = None) -> dict:
        """Train one stage to its step budget (or an agreed stop); return its last validation record."""
        t = self.cfg.trainer
        self.state = st = self.state.next_stage(name, t.max_steps if stage.steps is None else stage.steps)
        self.objective = self.built.objectives[name]
        # what the sampler sizes: the windows of the tasks the objective trains on
        self.train_set = self.train_sets.windows(self.objective.horizon, f"stages.{name}", self.objective.applies)
        if not self.train_set.datasets:  # e.g. the steady prior on time-dependent tasks only
            log.info(
                "stage %s: %s trains on no task of this run; it keeps the previous weights",
                name,
                type(self.objective).__name__,
            )
            st.total_steps, self.train_set = 0, self.train_sets.raw
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints" / name, t.keep_last_k, self.env.is_main)
        self.built.freeze(name)
        self.optimizer = build_optimizer(self.raw_model, self.cfg.optim, stage.lr, self.device)
        self.scheduler = build_scheduler(self.optimizer, self.cfg.optim, st.total_steps, t.time_budget_s)
        self.sampler = stage_sampler(
            self.train_set,
            self.cfg.data,
            t.batch_size,
            t.seed,
            self.env.world_size,
            self.env.rank,
            self._micro_batches_per_epoch(),
        )
        for cb in self.callbacks.values():
            cb.on_fit_start(self)  # before resume, so callback state exists to be loaded into
        if self._resume():
            log.info("stage %s already finished; skipping", name)
            return st.last_val
        if st.step == 0 and (stage.init_from or prev):
            self._load_weights(stage.init_from or prev)
        if st.step == 0 and st.total_steps:
            self.objective.setup(self.model, fixed_batches(self.train_set, self.device))
        self.train_set = self.train_sets.for_stage(name, stage, self.objective, self.raw_model)
        self.loader = stage_loader(self.train_set, self.sampler, self.cfg.data, self.device)
        check_batch_fits(self)  # before the first step: a batch that cannot fit is refused, not killed
        st.start_clock()
        while st.step < st.total_steps and not self._agree_stop():
            self._run_epoch()
        if st.interrupted:
            path = self.checkpointer.save(self.state_dict(), f"step_{self.global_step:08d}", self.global_step)
            sig_name = signal.Signals(st.interrupted).name
            raise signals.Interrupted(
                st.interrupted,
                f"stopped by {sig_name} at step {self.global_step} (stage "
                f"{st.stage}, its step {st.step}); checkpoint saved in {path}; run the "
                "same command again to resume",
            )
        if st.last_val.get("step") != self.global_step:
            self._eval_and_log()
        self.checkpointer.save(self.state_dict(stage_done=True), "final", self.global_step, consolidate=True)
        for cb in self.callbacks.values():
            cb.on_fit_end(self)
        self.train_set, self.loader = self.train_sets.raw, None  # the stage's workers exit
        st.stop_clock()
        return st.last_val

    def _stop_requested(self) -> bool:
        """This rank's own reason to stop (a callback's request, the time budget), before agreement."""
        budget, st = self.cfg.trainer.time_budget_s, self.state
        if budget is not None and st.stop_reason is None and st.elapsed_s() >= budget:
            st.stop_reason = f"time budget of {budget:g} s reached"
        return st.stop_reason is not None

    def _agree_stop(self, agreed: Agreed | None = None) -> bool:
        """Whether every rank stops now: a callback asked, the time budget is spent, or a signal arrived.

        ``agreed``: the decision already taken in the step's reduction; otherwise one all-reduce of
        the flags (between steps), from which all ranks also learn which signal it was.
        """
        agreed, st = agreed or agree_stop(self._stop_requested(), self.device), self.state
        if agreed.signum:  # not a stop on purpose: the stage is not finished, and resumes from the checkpoint
            st.interrupted = agreed.signum
        elif agreed.stop and st.stopped is None:
            st.stopped = st.stop_reason or "stopped on another rank"
            log.info("stage %s stops at step %d: %s", st.stage, st.step, st.stopped)
        return agreed.stop

    def _run_epoch(self) -> None:
        t, st = self.cfg.trainer, self.state
        if st.batches_done == 0:
            self.sampler.set_epoch(st.epoch)
        batches = iter(self.loader)  # the sampler yields this epoch's batches, from the resume point
        window = TrainWindow()
        while st.step < st.total_steps:
            loss, agreed = self._optimizer_step(batches, window)
            if loss is None:  # the epoch's batches are used up
                break
            evaluated = False
            if loss == loss:  # a skipped step returns NaN and does not count
                st.epoch_sum, st.epoch_n = st.epoch_sum + loss, st.epoch_n + 1
                if st.step % t.log_every == 0 or st.step == st.total_steps:
                    self._log_train(window)
                evaluated = bool(t.eval_every and st.step % t.eval_every == 0)
                if evaluated:
                    self._eval_and_log()
                for cb in self.callbacks.values():
                    cb.on_step_complete(self)
            # The step's reduction carried the stop flags; after an evaluation (the same steps on every
            # rank) they are agreed once more, so that early stopping acts before the next step.
            if self._agree_stop(agreed) or (evaluated and self._agree_stop()):
                break
        # The sums are checkpointed, so a resumed epoch's mean covers all of it; an epoch cut by a
        # signal stays open, its sums saved with the checkpoint for the rerun to continue.
        if not st.interrupted:
            st.close_epoch_losses()
        if st.batches_done >= self._micro_batches_per_epoch():
            st.epoch, st.batches_done = st.epoch + 1, 0
            if not t.eval_every:
                self._eval_and_log()

    def _optimizer_step(self, batches: Any, window: TrainWindow) -> tuple[float | None, Agreed | None]:
        """Accumulate ``accum_steps`` micro-batches and step. Returns the step's mean loss (NaN if skipped,
        None at the epoch's end) and the decisions its reduction carried (None when it did not reduce)."""
        t = self.cfg.trainer
        totals = StepTotals([task.name for task in self.tasks], self.device, self.env.world_size)
        n_samples = 0
        for micro in range(t.accum_steps):
            batch = next(batches, None)
            if batch is None:
                return None, None
            self.state.batches_done += 1
            # Gradients are all-reduced only on the last micro-batch of a step.
            out = forward_backward(self, batch, sync=micro == t.accum_steps - 1)
            if out is None:  # out of memory in forward on some rank: every rank skips (or stops) together
                return skip_or_stop(self, "out of memory in forward", t.on_oom), None
            loss, per_task, n = out
            totals.add(loss, per_task, t.accum_steps)
            n_samples += n
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.raw_model.parameters() if p.requires_grad], self.cfg.optim.grad_clip or float("inf")
        )
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        agreed = totals.reduce(grad_norm, self._stop_requested(), self.state.elapsed_s())  # the step's one host sync
        if agreed.nonfinite_loss:
            return skip_or_stop(self, "non-finite loss", t.on_nonfinite), agreed
        if not math.isfinite(agreed.grad_norm):
            return skip_or_stop(self, "non-finite gradient norm", t.on_nonfinite), agreed
        self.optimizer.step()
        advance(self.scheduler, agreed.elapsed_s)
        self.optimizer.zero_grad(set_to_none=True)
        self.state.count_step(agreed.loss)
        window.add(agreed, n_samples * self.env.world_size)
        for cb in self.callbacks.values():
            cb.on_step_end(self)
        return agreed.loss, agreed

    def _log_train(self, window: TrainWindow) -> None:
        if not window.steps:
            return
        self.log_record(self._record("train", **window.fields(self)))
        window.reset()

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        """The weights to evaluate with, in place for the block (e.g. EMA's average)."""
        with contextlib.ExitStack() as stack:
            for cb in self.callbacks.values():
                stack.enter_context(cb.eval_weights(self))
            yield

    def evaluate(self, split: str) -> dict:
        """Rollout nRMSE per task of the stage's objective's predictions, with the evaluation weights."""
        with self.eval_weights():
            objective, model = self.objective, self.raw_model
            return evaluate(
                lambda b: objective.predict(model, b),
                model,
                self.eval_sets[split],
                self.device,
                self.autocast,
                batch_size=self.cfg.trainer.batch_size,
                rank=self.env.rank,
                world_size=self.env.world_size,
            )

    def _eval_and_log(self) -> dict:
        metrics = self.evaluate("val")
        self.state.last_val = self._record("eval", split="val", **metrics)
        self.log_record(self.state.last_val)
        log.info(
            "step %d (%s step %d) val nRMSE %s",
            self.global_step,
            self.stage_name,
            self.step,
            "  ".join(f"{k.split('/')[1]}={v:.4g}" for k, v in metrics.items()),
        )
        for cb in self.callbacks.values():
            cb.on_eval_end(self, metrics)
        return self.state.last_val
