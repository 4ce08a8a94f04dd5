"""One micro-batch of an optimizer step: forward, the agreement on out-of-memory, backward.

Out-of-memory in forward is agreed across ranks before anyone starts backward, so no rank waits in a
lone gradient all-reduce; in backward no agreement is possible (the other ranks may be inside its
all-reduce), so it stops the run. Which failures skip and which stop is tabled in docs/reliability.md.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from ups.distributed.collectives import any_rank_on_host
from ups.distributed.parallelize import grad_sync
from ups.training.failures import StopTraining, is_oom, stop_if_sharded
from ups.training.step_totals import batch_loss

if TYPE_CHECKING:
    from ups.training.trainer import Trainer

log = logging.getLogger(__name__)


def forward_backward(trainer: "Trainer", batch: Any, sync: bool) -> tuple[torch.Tensor, Any, int] | None:
    """Forward and backward of one micro-batch, its gradients all-reduced only when ``sync``.

    Returns the loss, the per-task losses and the number of samples (``batch_loss``), or None when
    some rank ran out of memory in forward: then every rank returns None, before any backward.
    """
    t = trainer.cfg.trainer
    with grad_sync(trainer.model, enabled=sync):
        oom = False
        try:
            for cb in trainer.callbacks.values():
                cb.on_before_forward(trainer)
            with trainer.autocast():
                loss, per_task, n = batch_loss(trainer.objective, trainer.model, batch, trainer.device)
            for cb in trainer.callbacks.values():
                loss = cb.on_before_backward(trainer, loss)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_oom(err):
                raise
            stop_if_sharded(trainer, err)
            oom = True
            log.warning("rank %d: %s", trainer.env.rank, err)
        # Agreed before anyone starts backward, so no rank waits in a lone gradient all-reduce;
        # the host knows the answer, so asking the other ranks never waits for the GPU.
        if any_rank_on_host(oom):
            return None
        try:
            (loss / t.accum_steps).backward()  # a non-finite loss is skipped after the reduction
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_oom(err):
                raise
            # The other ranks may be inside this backward's gradient all-reduce: no agreed skip
            # is possible. Stopping this rank makes the launcher stop them and restart the job.
            raise StopTraining(
                f"rank {trainer.env.rank} ran out of memory in backward at step "
                f"{trainer.global_step + 1}; lower trainer.batch_size or turn on "
                f"hardware.activation_checkpointing ({err})"
            ) from None
    return loss, per_task, n
