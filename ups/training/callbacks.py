"""Cross-cutting concerns hung off the training loop: EMA, early stopping, checkpoints, progress display.

A callback sees the trainer at fixed points and may keep state that goes into checkpoints (under
its name in the ``callbacks`` config group, so adding or removing one never mixes up the others).
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import torch

if TYPE_CHECKING:
    from ups.training.trainer import Trainer

log = logging.getLogger(__name__)


class Callback:
    """Hooks called by :class:`~ups.training.trainer.Trainer`; every default does nothing."""

    def on_run_start(self, trainer: "Trainer") -> None: ...
    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_before_forward(self, trainer: "Trainer") -> None:
        """Before each micro-batch's forward, inside the trainer's out-of-memory handling: an
        out-of-memory error raised here is treated as one raised by the forward itself."""

    def on_before_backward(self, trainer: "Trainer", loss: torch.Tensor) -> torch.Tensor:
        """A micro-batch's loss before backward; return it, or what replaces it (an injected NaN)."""
        return loss

    def on_step_end(self, trainer: "Trainer") -> None: ...

    def on_step_complete(self, trainer: "Trainer") -> None:
        """After a counted step is fully handled: logged, and evaluated and checkpointed when due."""

    def on_log(self, trainer: "Trainer", record: dict) -> None: ...
    def on_eval_end(self, trainer: "Trainer", metrics: dict) -> None: ...
    def on_fit_end(self, trainer: "Trainer") -> None: ...
    def on_run_end(self, trainer: "Trainer") -> None: ...

    @contextmanager
    def eval_weights(self, trainer: "Trainer") -> Iterator[None]:
        """Weights to evaluate with (EMA swaps its average in here)."""
        yield

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class EMA(Callback):
    """Exponential moving average of the trainable weights, used for evaluation and checkpoints."""

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}

    def _params(self, trainer: "Trainer") -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in trainer.raw_model.named_parameters() if p.requires_grad}

    def on_fit_start(self, trainer: "Trainer") -> None:
        for n, p in self._params(trainer).items():
            self.shadow.setdefault(n, p.detach().clone())

    @torch.no_grad()
    def on_step_end(self, trainer: "Trainer") -> None:
        for n, p in self._params(trainer).items():
            self.shadow[n].lerp_(p.detach(), 1.0 - self.decay)

    @contextmanager
    def eval_weights(self, trainer: "Trainer") -> Iterator[None]:
        params = self._params(trainer)
        backup = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(backup[n])

    def state_dict(self) -> dict:
        return {"shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = dict(state["shadow"])


class EarlyStopping(Callback):
    """Stop when the mean validation nRMSE has not improved for ``patience`` evaluations.

    Every rank sees the same all-reduced metrics, so every rank reaches the same decision.
    """

    def __init__(self, patience: int, metric: str = "nrmse/mean"):
        self.patience, self.metric = patience, metric
        self.best, self.bad = float("inf"), 0

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.best, self.bad = float("inf"), 0  # each stage is judged on its own

    def on_eval_end(self, trainer: "Trainer", metrics: dict) -> None:
        value = metrics[self.metric]
        if value < self.best:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                trainer.request_stop(f"early stopping: {self.metric} has not improved for {self.bad} evaluations")

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad = state["best"], state["bad"]


class ProgressBar(Callback):
    """Progress on rank 0: a tqdm bar per stage on a terminal; without one (a SLURM ``.out`` file, a
    pipe), one log line per training record (every ``trainer.log_every`` steps) with the loss,
    samples/s, the stage's ETA and peak memory, so a log file shows how a run is going.

    Log lines are routed through the bar while it runs, so they never glue onto it.
    """

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stdout
        self.bar, self._redirect = None, None

    def _enabled(self, trainer: "Trainer") -> bool:
        return trainer.env.is_main and self.stream.isatty()

    def on_run_start(self, trainer: "Trainer") -> None:
        if self._enabled(trainer):
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def on_fit_start(self, trainer: "Trainer") -> None:
        if self._enabled(trainer):
            from tqdm import tqdm

            self.bar = tqdm(
                total=trainer.total_steps, desc=trainer.stage_name, file=self.stream, dynamic_ncols=True, unit="step"
            )

    def on_step_end(self, trainer: "Trainer") -> None:
        if self.bar is not None:
            self.bar.n = trainer.step  # also right after a resume, which starts mid-stage
            self.bar.set_postfix(epoch=trainer.epoch, loss=f"{trainer.last_loss:.4g}", refresh=False)
            self.bar.update(0)

    def on_log(self, trainer: "Trainer", record: dict) -> None:
        if self.bar is not None or not trainer.env.is_main or record.get("kind") != "train":
            return
        per_s = record["samples_per_s"] / max(record["global_batch"], 1)  # optimizer steps per second
        eta = (trainer.total_steps - trainer.step) / per_s if per_s > 0 else float("nan")
        log.info(
            "%s step %d/%d  loss %.4g  %.1f samples/s  ETA %s  peak memory %.0f MB",
            trainer.stage_name,
            trainer.step,
            trainer.total_steps,
            record["loss"],
            record["samples_per_s"],
            f"{int(eta // 60)}:{int(eta % 60):02d}" if eta == eta else "?",
            record.get("peak_memory_mb", 0.0),
        )

    def on_fit_end(self, trainer: "Trainer") -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_run_end(self, trainer: "Trainer") -> None:
        self.on_fit_end(trainer)
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None


class ModelCheckpoint(Callback):
    """After each evaluation: save a step checkpoint, and ``best`` when validation nRMSE improves.

    Both go into the stage's own folder, ``checkpoints/<stage>/``; each stage has its own best. The
    new best value is kept only once ``best/`` holds it: a copy that fails (a full disk) leaves the
    old value, so the next evaluation that beats it, or the rerun, writes ``best/`` again.
    """

    def __init__(self, metric: str = "nrmse/mean"):
        self.metric, self.best, self.best_step = metric, float("inf"), -1

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.best, self.best_step = float("inf"), -1  # a new stage's best (a resumed stage loads its own afterwards)

    def _best_missing(self, trainer: "Trainer") -> bool:
        """Whether ``best/`` lacks the best this state records (a copy cut short before a resume)."""
        if self.best_step < 0:
            return False
        import json

        from ups.training.checkpoint import MARKER

        best = trainer.checkpointer.root / "best"
        try:
            return (
                not (best / MARKER).exists() or json.loads((best / "meta.json").read_text())["step"] != self.best_step
            )
        except (OSError, ValueError, KeyError, TypeError):
            return True

    def _repair(self, trainer: "Trainer") -> None:
        """Copy the recorded best step to ``best/`` again if a failed copy left it out (all ranks call this)."""
        from ups.distributed.collectives import any_rank

        if any_rank(self._best_missing(trainer), device=trainer.device):  # rank 0's file system decides
            source = trainer.checkpointer.root / f"step_{self.best_step:08d}"
            if any_rank((source / "COMPLETE").exists(), device=trainer.device):
                log.warning(
                    "best/ does not hold the best checkpoint (step %d), which a failed copy left out; copying it again",
                    self.best_step,
                )
                trainer.checkpointer.copy(source.name, "best")
            else:
                log.warning(
                    "best/ lacks the best checkpoint (step %d) and that step folder is gone; the next "
                    "evaluation becomes the best",
                    self.best_step,
                )
                self.best, self.best_step = float("inf"), -1

    def on_fit_end(self, trainer: "Trainer") -> None:
        self._repair(trainer)  # a resumed stage may end without another evaluation

    def on_eval_end(self, trainer: "Trainer", metrics: dict) -> None:
        self._repair(trainer)
        improved = metrics[self.metric] < self.best
        previous = (self.best, self.best_step)
        name = f"step_{trainer.global_step:08d}"
        if improved:  # in the saved state, so that a resume from this step knows its best
            self.best, self.best_step = metrics[self.metric], trainer.global_step
        try:
            trainer.checkpointer.save(trainer.state_dict(), name, trainer.global_step)  # every rank (collective)
            if improved:
                trainer.checkpointer.copy(name, "best")
        except BaseException:
            self.best, self.best_step = previous  # not recorded: the next evaluation may still become best
            raise

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state["best"], int(state.get("best_step", -1))
