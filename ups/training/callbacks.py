"""Cross-cutting concerns hung off the training loop: EMA, early stopping, progress display.

A callback sees the trainer at fixed points and may keep state that goes into checkpoints.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import torch

if TYPE_CHECKING:
    from ups.training.trainer import Trainer


class Callback:
    """Hooks called by :class:`~ups.training.trainer.Trainer`; every default does nothing."""

    def on_fit_start(self, trainer: "Trainer") -> None: ...
    def on_step_end(self, trainer: "Trainer") -> None: ...
    def on_log(self, trainer: "Trainer", record: dict) -> None: ...
    def on_eval_end(self, trainer: "Trainer", metrics: dict) -> None: ...
    def on_fit_end(self, trainer: "Trainer") -> None: ...

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
            raise ValueError(f"trainer.ema_decay must lie in (0, 1), got {decay}")
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
    """A one-line progress bar on rank 0, only when stdout is a terminal (no noise in log files)."""

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stdout
        self.enabled = self.stream.isatty()
        self.t0 = 0.0
        self.loss = float("nan")

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.enabled = self.enabled and trainer.env.is_main
        self.t0, self.start = time.perf_counter(), trainer.step

    def on_log(self, trainer: "Trainer", record: dict) -> None:
        if record["kind"] == "train":
            self.loss = record["loss"]

    def on_step_end(self, trainer: "Trainer") -> None:
        if not self.enabled:
            return
        done, total = trainer.step, trainer.total_steps
        frac = done / max(total, 1)
        rate = (done - self.start) / max(time.perf_counter() - self.t0, 1e-9)
        eta = (total - done) / max(rate, 1e-9)
        bar = "#" * int(30 * frac)
        self.stream.write(f"\r[{bar:<30}] {done}/{total} epoch {trainer.epoch} loss {self.loss:.4g} "
                          f"{rate:.1f} it/s eta {eta:.0f}s ")
        self.stream.flush()

    def on_fit_end(self, trainer: "Trainer") -> None:
        if self.enabled:
            self.stream.write("\n")


class ModelCheckpoint(Callback):
    """After each evaluation: save a step checkpoint, and ``best`` when validation nRMSE improves."""

    def __init__(self, metric: str = "nrmse/mean"):
        self.metric, self.best = metric, float("inf")

    def on_eval_end(self, trainer: "Trainer", metrics: dict) -> None:
        improved = metrics[self.metric] < self.best
        if improved:
            self.best = metrics[self.metric]
        name = f"step_{trainer.step:08d}"
        # After updating best, so the saved callback state has it. Every rank calls save (collective).
        trainer.checkpointer.save(trainer.state_dict(), name, trainer.step)
        if improved:
            trainer.checkpointer.copy(name, "best")

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
