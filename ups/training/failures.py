"""What the trainer does when a step fails: skip it on every rank, or stop, and say why in one paragraph.

Which failures skip and which stop, per strategy, is tabled in docs/reliability.md.
"""

from __future__ import annotations

import errno
import logging
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from torch.distributed.checkpoint.api import CheckpointException

from ups.distributed.parallelize import is_sharded
from ups.errors import ConfigError, StopTraining  # noqa: F401 - StopTraining: imported from here too

if TYPE_CHECKING:
    from ups.training.trainer import Trainer

log = logging.getLogger(__name__)


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Name ``path`` in an error raised while writing it. A full disk's OSError names no file, and
    torch's checkpoint writer wraps it in a ``CheckpointException`` (a BaseException, so no
    ``except Exception`` sees it) whose text is every rank's traceback."""
    try:
        yield
    except shutil.Error as err:  # copytree gathers (source, destination, reason) per failed file
        reason = str(err.args[0][0][2]) if err.args and isinstance(err.args[0], list) and err.args[0] else str(err)
        code = errno.ENOSPC if "No space left" in reason else None
        reason = reason.split("] ", 1)[1] if reason.startswith("[Errno") else reason  # OSError adds it again
        raise OSError(code, f"{reason} while writing {path}{_hint(code)}") from None
    except OSError as err:
        if err.filename:
            raise
        raise OSError(err.errno, f"{err.strerror or err} while writing {path}{_hint(err.errno)}") from err
    except CheckpointException as err:
        first = next(iter(err.failures.values()))[0]
        code, reason = getattr(first, "errno", None), getattr(first, "strerror", None) or first
        if code is None and _disk_full(path):  # torch's file writer reports a short write without the errno
            code, reason = errno.ENOSPC, f"No space left on device ({reason})"
        raise OSError(
            code, f"{reason} while writing {path} (rank {', '.join(map(str, sorted(err.failures)))}){_hint(code)}"
        ) from None


def _hint(code: int | None) -> str:
    return "; free some space and run the same command again to resume" if code == errno.ENOSPC else ""


def _disk_full(path: str | Path) -> bool:
    """Whether the file system ``path`` is on has (almost) no space left: a write that failed there
    failed for that, whatever the writer said (torch's: ``unexpected pos 704 vs 598``)."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        return shutil.disk_usage(where).free < 2**20
    except OSError:
        return False


def is_oom(err: BaseException) -> bool:
    """An out-of-memory error on any device: CUDA raises OutOfMemoryError, the CPU allocator a RuntimeError."""
    return (
        isinstance(err, torch.OutOfMemoryError)
        or "can't allocate memory" in str(err)
        or "out of memory" in str(err).lower()
    )


def stop_if_sharded(trainer: "Trainer", err: BaseException) -> None:
    """Under FSDP2 an out-of-memory error mid-forward cannot be skipped together: the other ranks are
    waiting inside the same forward's parameter all-gather, and would wait in it for
    ``parallelism.timeout_s``. This rank stops at once instead; the launcher then stops the others
    and, with ``parallelism.max_restarts``, restarts the job from its newest checkpoint."""
    if is_sharded(trainer.model) and trainer.env.world_size > 1:
        raise StopTraining(
            f"rank {trainer.env.rank} ran out of memory in forward at step {trainer.global_step + 1} "
            f"under FSDP2, where the ranks cannot skip a step together mid-forward; stopping "
            f"(lower trainer.batch_size or turn on hardware.activation_checkpointing): {err}"
        )


def skip_or_stop(trainer: "Trainer", reason: str, policy: str) -> float:
    """Every rank reaches this together: drop the step's gradients, or stop the run."""
    trainer.optimizer.zero_grad(set_to_none=True)
    if policy == "stop":
        raise StopTraining(f"stopping at step {trainer.global_step + 1} on all ranks: {reason} (trainer policy 'stop')")
    in_a_row = trainer.state.count_skip()
    log.warning("step %d skipped on all ranks: %s", trainer.global_step + 1, reason)
    limit = trainer.cfg.trainer.max_consecutive_skips
    if in_a_row >= limit:
        # Without a bound, diverged weights make every later step non-finite: each epoch would skip
        # every batch and evaluate NaN, forever.
        raise StopTraining(
            f"stopping at step {trainer.global_step + 1} of stage {trainer.stage_name}: {limit} steps in a row were "
            f"skipped, the last for: {reason}. The weights have likely diverged (is optim.lr="
            f"{trainer.cfg.optim.lr:g} too large?) or every batch runs out of memory (lower trainer.batch_size); "
            f"trainer.max_consecutive_skips sets the limit"
        )
    return float("nan")


# -- a batch that cannot fit ---------------------------------------------------------------------
def available_memory_mb(device: torch.device, local_ranks: int = 1) -> float:
    """Memory a new allocation of this rank can still get: the GPU's free memory, or on the CPU the
    kernel's MemAvailable (capped by a cgroup limit), shared among the node's ranks."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**20
    avail = float("inf")
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) / 1024
    except OSError:
        pass
    try:  # a container's limit (cgroup v2) is often far below the machine's memory
        limit, used = (open(f"/sys/fs/cgroup/memory.{k}").read().strip() for k in ("max", "current"))
        if limit != "max":
            avail = min(avail, (int(limit) - int(used)) / 2**20)
    except (OSError, ValueError):
        pass
    return avail / max(1, local_ranks)


def _saved_bytes(trainer: "Trainer", batch_size: int, task: int) -> tuple[int, int]:
    """(bytes saved for backward by one forward of ``batch_size`` windows of ``task``, bytes of the batch)."""
    sets = trainer.train_set
    n = sets.sizes()[task]
    (batch,) = sets.collate([sets[task, i % n] for i in range(batch_size)])
    batch = {k: v.to(trainer.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    params = {p.untyped_storage().data_ptr() for p in trainer.raw_model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), trainer.autocast():
        loss = trainer.objective.loss(trainer.raw_model, batch)
    del loss
    return sum(storages.values()), sum(v.nbytes for v in batch.values() if torch.is_tensor(v))


def estimate_step_mb(trainer: "Trainer") -> tuple[float, float, str]:
    """(MB one optimizer step of ``trainer.batch_size`` needs, MB per sample, the task that needs most).

    The activations autograd keeps for backward are measured in two forward passes of 1 and 2
    windows per task on the real model (the tuner's measure, without a step: weights, buffers and
    random generators are restored), extrapolated linearly; weights, gradients and AdamW's two
    moments add four times the parameters."""
    from ups.training.rng import rng_state, set_rng_state

    model = trainer.raw_model
    rng, buffers = rng_state(), {n: b.detach().clone() for n, b in model.named_buffers()}
    try:
        per_sample, worst = 0.0, ""
        for t, ds in enumerate(trainer.train_set.datasets):
            (a1, x1), (a2, x2) = _saved_bytes(trainer, 1, t), _saved_bytes(trainer, 2, t)
            slope = max(a2 - a1, 0) + 2 * max(x2 - x1, 0)  # the batch itself, and the next one being read
            if slope >= per_sample:
                per_sample, worst = slope, ds.task.name
    finally:
        set_rng_state(rng)
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
        trainer.optimizer.zero_grad(set_to_none=True)
    weights = 4 * sum(p.numel() * p.element_size() for p in model.parameters())
    micro = trainer.cfg.trainer.batch_size
    return (weights + micro * per_sample) / 2**20, per_sample / 2**20, worst


def check_batch_fits(trainer: "Trainer") -> None:
    """Refuse, before the first step, a batch whose step cannot fit in the memory available: a run
    that grows past it is killed by the kernel without a word (and takes other jobs' memory first)."""
    from ups.distributed.collectives import any_rank

    cfg = trainer.cfg
    if not cfg.trainer.get("check_memory", True) or trainer.step >= trainer.total_steps:
        return
    if is_sharded(trainer.model) or cfg.hardware.get("compile"):
        return  # a probe forward would gather shards or compile for two more shapes; not estimated there
    try:
        need, per_sample, task = estimate_step_mb(trainer)
    except Exception as err:  # noqa: BLE001 - an estimate must never stop a run that would work
        log.debug("no memory estimate: %s", err)
        need, per_sample, task = 0.0, 0.0, ""
    have = available_memory_mb(trainer.device, trainer.env.local_world_size)
    if any_rank(need > have, device=trainer.device):
        where = "GPU" if trainer.device.type == "cuda" else "machine"
        raise ConfigError(
            f"trainer.batch_size={cfg.trainer.batch_size} cannot fit: one training step needs about "
            f"{need / 1024:.1f} GB ({per_sample:.2f} MB per sample of task {task}, measured on this model, plus "
            f"weights, gradients and optimizer state), but this {where} has {have / 1024:.1f} GB available per rank; the "
            f"run would be killed for lack of memory. Lower trainer.batch_size (python -m ups.tune with the same "
            f"overrides finds the largest that fits) or, if the estimate is wrong, set trainer.check_memory=false"
        )
    if need and trainer.env.is_main:
        log.info(
            "memory estimate for a step of batch %d: %.0f MB (%.0f MB available per rank)",
            cfg.trainer.batch_size,
            need,
            have,
        )
