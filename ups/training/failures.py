"""What the trainer does when a step fails: skip it on every rank, or stop, and say why in one paragraph.

Which failures skip and which stop, per strategy, is tabled in docs/reliability.md.
"""
from __future__ import annotations

import errno
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from torch.distributed.checkpoint.api import CheckpointException

if TYPE_CHECKING:
    from ups.training.trainer import Trainer

log = logging.getLogger(__name__)


class StopTraining(RuntimeError):
    """Raised when training must stop: on every rank for an agreed policy, on one rank when no agreement
    is possible (the launcher then ends the others)."""


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Name ``path`` in an error raised while writing it. A full disk's OSError names no file, and
    torch's checkpoint writer wraps it in a ``CheckpointException`` (a BaseException, so no
    ``except Exception`` sees it) whose text is every rank's traceback."""
    try:
        yield
    except OSError as err:
        if err.filename:
            raise
        raise OSError(err.errno, f"{err.strerror or err} while writing {path}{_hint(err.errno)}") from err
    except CheckpointException as err:
        first = next(iter(err.failures.values()))[0]
        code = getattr(first, "errno", None)
        raise OSError(code, f"{getattr(first, 'strerror', None) or first} while writing {path} "
                            f"(rank {', '.join(map(str, sorted(err.failures)))}){_hint(code)}") from None


def _hint(code: int | None) -> str:
    return "; free some space and run the same command again to resume" if code == errno.ENOSPC else ""


def is_oom(err: BaseException) -> bool:
    """An out-of-memory error on any device: CUDA raises OutOfMemoryError, the CPU allocator a RuntimeError."""
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err) \
        or "out of memory" in str(err).lower()


def stop_if_sharded(trainer: "Trainer", err: BaseException) -> None:
    """Under FSDP2 an out-of-memory error mid-forward cannot be skipped together: the other ranks are
    waiting inside the same forward's parameter all-gather, and would wait in it for
    ``parallelism.timeout_s``. This rank stops at once instead; the launcher then stops the others
    and, with ``parallelism.max_restarts``, restarts the job from its newest checkpoint."""
    if trainer.cfg.parallelism.strategy == "fsdp2" and trainer.env.world_size > 1:
        raise StopTraining(f"rank {trainer.env.rank} ran out of memory in forward at step {trainer.global_step + 1} "
                           f"under FSDP2, where the ranks cannot skip a step together mid-forward; stopping "
                           f"(lower trainer.batch_size or turn on hardware.activation_checkpointing): {err}")


def skip_or_stop(trainer: "Trainer", reason: str, policy: str) -> float:
    """Every rank reaches this together: drop the step's gradients, or stop the run."""
    trainer.optimizer.zero_grad(set_to_none=True)
    if policy == "stop":
        raise StopTraining(f"stopping at step {trainer.global_step + 1} on all ranks: {reason} "
                           "(trainer policy 'stop')")
    trainer.skipped_steps += 1
    trainer.consecutive_skips += 1
    log.warning("step %d skipped on all ranks: %s", trainer.global_step + 1, reason)
    limit = trainer.cfg.trainer.max_consecutive_skips
    if trainer.consecutive_skips >= limit:
        # Without a bound, diverged weights make every later step non-finite: each epoch would skip
        # every batch and evaluate NaN, forever.
        raise StopTraining(
            f"stopping at step {trainer.global_step + 1} of stage {trainer.stage_name}: {limit} steps in a row were "
            f"skipped, the last for: {reason}. The weights have likely diverged (is optim.lr="
            f"{trainer.cfg.optim.lr:g} too large?) or every batch runs out of memory (lower trainer.batch_size); "
            f"trainer.max_consecutive_skips sets the limit")
    return float("nan")
