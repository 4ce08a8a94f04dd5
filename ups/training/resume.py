"""What a trainer checkpoints, and how a stage resumes from it.

The tensors (model, optimizer, callback state) go through DCP so they reshard across layouts; the
bookkeeping (steps, sampler position, scheduler, why a stage stopped) is packed as one opaque leaf;
each rank's RNG goes under its own key because DCP merges identical keys across ranks.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ups.config import ConfigError
from ups.distributed.collectives import any_rank
from ups.training.checkpoint import (Checkpointer, CheckpointError, pack, rank_key, rng_state, set_rng_state, unpack,
                                     verify)

if TYPE_CHECKING:
    from ups.training.trainer import Trainer

log = logging.getLogger(__name__)


def trainer_state(trainer: "Trainer", stage_done: bool = False) -> dict:
    """Everything needed to continue exactly: DCP-shardable tensors plus packed bookkeeping."""
    model_sd, optim_sd = get_state_dict(trainer.raw_model, trainer.optimizer)
    book = {"step": trainer.step, "offset": trainer.offset, "epoch": trainer.epoch, "stage": trainer.stage_name,
            "stage_done": stage_done, "total_steps": trainer.total_steps, "stopped": trainer._stopped,
            "sampler": trainer.sampler.state_dict(batches_done=trainer.batches_done),  # consumed, not prefetched
            "scheduler": trainer.scheduler.state_dict(), "world_size": trainer.env.world_size,
            "skipped_steps": trainer.skipped_steps, "epoch_losses": trainer.epoch_losses,
            "epoch_sum": trainer.epoch_sum, "epoch_n": trainer.epoch_n,
            "last_val": trainer.last_val, "train_seconds": trainer._train_seconds(),
            "callbacks": sorted(trainer.callbacks), "config": OmegaConf.to_container(trainer.cfg, resolve=True)}
    return {"model": model_sd, "optim": optim_sd, "trainer": pack(book),
            "callbacks": {name: cb.state_dict() for name, cb in trainer.callbacks.items()},
            rank_key(trainer.env.rank): pack(rng_state())}


def usable_checkpoint(trainer: "Trainer") -> Path | None:
    """The newest checkpoint of the stage that passes its checksums on every rank, or None if there is none.

    A bad one (corrupt, truncated, a file missing) is skipped with a warning naming the file, and the
    next older one is tried; the ranks agree on each verdict, so all load the same folder. If
    checkpoints exist but none is usable, a CheckpointError says so.
    """
    candidates = trainer.checkpointer.candidates()
    for path in candidates:
        problem = None
        try:
            verify(path)
        except CheckpointError as err:
            problem = str(err)
        if any_rank(problem is not None, device=trainer.device):
            log.warning("checkpoint %s is not usable: %s; trying the next older one", path,
                        problem or "it failed its checksums on another rank")
            continue
        return path
    bad = len(candidates) + len(trainer.checkpointer.unreadable)
    if bad:
        raise CheckpointError(f"no usable checkpoint of stage {trainer.stage_name} in {trainer.checkpointer.root}: "
                              f"all {bad} failed their checks (warnings above name the files). Move "
                              "that folder away to start the stage afresh, or use another paths.output_dir")
    return None


def resume_stage(trainer: "Trainer") -> bool:
    """Load this stage's newest complete checkpoint; True if the stage had already finished.

    A finished stage whose budget has since been raised (``trainer.max_steps`` or its
    ``steps``) continues from its final checkpoint, unless it had stopped early on purpose.
    """
    path = usable_checkpoint(trainer) if trainer.cfg.trainer.resume else None
    if path is None:
        return False
    saved = unpack(Checkpointer.load_into(path, {"trainer": b""})["trainer"])
    template = trainer_state(trainer)
    names = [n for n in saved["callbacks"] if n in trainer.callbacks]
    template["callbacks"] = {n: template["callbacks"][n] for n in names}
    for n in set(trainer.callbacks) - set(saved["callbacks"]):
        log.warning("callback %s is not in %s; it starts afresh", n, path)
    own_rng = rank_key(trainer.env.rank)
    if own_rng not in Checkpointer.saved_keys(path):
        log.warning("checkpoint was saved by %d ranks and holds no RNG state for rank %d: continuing with "
                    "this rank's current RNG (the resumed run is not bit-identical)", saved["world_size"],
                    trainer.env.rank)
        template.pop(own_rng)
    state = Checkpointer.load_into(path, template)
    set_state_dict(trainer.raw_model, trainer.optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    trainer.scheduler.load_state_dict(saved["scheduler"])
    try:
        trainer.sampler.load_state_dict(saved["sampler"])
    except ValueError as err:  # a layout that cannot continue this data order: the user's choice to make
        raise ConfigError(f"cannot resume from {path}: {err}") from None
    trainer.step, trainer.offset, trainer.epoch = saved["step"], saved["offset"], saved["epoch"]
    trainer.batches_done, trainer.skipped_steps = saved["sampler"]["batches_done"], saved["skipped_steps"]
    trainer.epoch_losses, trainer.last_val = list(saved["epoch_losses"]), dict(saved["last_val"])
    trainer.epoch_sum, trainer.epoch_n = saved["epoch_sum"], saved["epoch_n"]
    trainer.train_seconds, trainer._stopped = saved["train_seconds"], saved["stopped"]
    if own_rng in state and trainer.cfg.faults.restore_rng:
        set_rng_state(unpack(state[own_rng]))
    for n in names:
        trainer.callbacks[n].load_state_dict(state["callbacks"][n])
    done = bool(saved["stage_done"])
    if done and trainer.step < trainer.total_steps and not trainer._stopped:
        log.info("stage %s finished at step %d; its budget is now %d steps: continuing", trainer.stage_name,
                 trainer.step, trainer.total_steps)
        done = False
    elif not done:
        log.info("resumed stage %s from %s at step %d (global step %d)", trainer.stage_name, path, trainer.step,
                 trainer.global_step)
    return done
