"""What a trainer checkpoints, how a stage resumes from it, and the checks before a run directory is reused.

The tensors (model, optimizer, callback state) go through DCP so they reshard across layouts; the
bookkeeping (steps, sampler position, scheduler, why a stage stopped, the data's fingerprints) is
packed as one JSON leaf; each rank's RNG goes under its own key because DCP merges identical keys
across ranks.

:func:`check_run_dir` runs before anything in an existing run directory changes (``config.yaml``
included): a directory holding checkpoints is resumed only with the same model, tasks and data, and
is replaced only when the user asks (``trainer.resume=false trainer.overwrite=true``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from omegaconf import OmegaConf
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ups.data.readers import DataFileError
from ups.data.validate import data_fingerprints
from ups.distributed.collectives import any_rank
from ups.errors import ConfigError
from ups.training.checkpoint import MARKER, Checkpointer, CheckpointError, pack, read_metadata, unpack
from ups.training.checksums import verify
from ups.training.rng import rank_key, rng_state, set_rng_state

if TYPE_CHECKING:
    from ups.training.trainer import Trainer

log = logging.getLogger(__name__)


def trainer_state(trainer: "Trainer", stage_done: bool = False) -> dict:
    """Everything needed to continue exactly: DCP-shardable tensors plus packed bookkeeping."""
    model_sd, optim_sd = get_state_dict(trainer.raw_model, trainer.optimizer)
    book = {
        **trainer.state.state_dict(),  # the counters (ups/training/state.py)
        "stage_done": stage_done,
        # the position the loop consumed, not what the loader's workers prefetched
        "sampler": trainer.sampler.state_dict(batches_done=trainer.state.batches_done),
        "scheduler": trainer.scheduler.state_dict(),
        "world_size": trainer.env.world_size,
        "callbacks": sorted(trainer.callbacks),
        "config": OmegaConf.to_container(trainer.cfg, resolve=True),
        "data": data_fingerprints(trainer.tasks),
    }
    return {
        "model": model_sd,
        "optim": optim_sd,
        "trainer": pack(book),
        "callbacks": {name: cb.state_dict() for name, cb in trainer.callbacks.items()},
        rank_key(trainer.env.rank): rng_state(),
    }


def _allow_unverified(cfg: Any) -> bool:
    return bool(cfg.trainer.get("allow_unverified_checkpoints", False))


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
            verify(path, _allow_unverified(trainer.cfg))
        except CheckpointError as err:
            problem = str(err)
        if any_rank(problem is not None, device=trainer.device):
            log.warning(
                "checkpoint %s is not usable: %s; trying the next older one",
                path,
                problem or "it failed its checksums on another rank",
            )
            continue
        return path
    bad = len(candidates) + len(trainer.checkpointer.unreadable)
    if bad:
        raise CheckpointError(
            f"no usable checkpoint of stage {trainer.stage_name} in {trainer.checkpointer.root}: "
            f"all {bad} failed their checks (warnings above name the files). Move "
            "that folder away to start the stage afresh, or use another paths.output_dir (for "
            "checkpoints that only lack checksums.json and that you trust: "
            "trainer.allow_unverified_checkpoints=true)"
        )
    return None


def resume_stage(trainer: "Trainer") -> bool:
    """Load this stage's newest complete checkpoint; True if the stage had already finished.

    A finished stage whose budget has since been raised (``trainer.max_steps`` or its
    ``steps``) continues from its final checkpoint, unless it had stopped early on purpose.
    """
    path = usable_checkpoint(trainer) if trainer.cfg.trainer.resume else None
    if path is None:
        return False
    allow = _allow_unverified(trainer.cfg)
    saved = unpack(Checkpointer.load_into(path, {"trainer": b""}, allow)["trainer"])
    template = trainer_state(trainer)
    names = [n for n in saved["callbacks"] if n in trainer.callbacks]
    template["callbacks"] = {n: template["callbacks"][n] for n in names}
    for n in set(trainer.callbacks) - set(saved["callbacks"]):
        log.warning("callback %s is not in %s; it starts afresh", n, path)
    own_rng = rank_key(trainer.env.rank)
    if own_rng not in Checkpointer.saved_keys(path):
        log.warning(
            "checkpoint was saved by %d ranks and holds no RNG state for rank %d: continuing with "
            "this rank's current RNG (the resumed run is not bit-identical)",
            saved["world_size"],
            trainer.env.rank,
        )
        template.pop(own_rng)
    state = Checkpointer.load_into(path, template, allow)
    set_state_dict(
        trainer.raw_model, trainer.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    trainer.scheduler.load_state_dict(saved["scheduler"])
    try:
        trainer.sampler.load_state_dict(saved["sampler"])
    except ValueError as err:  # a layout that cannot continue this data order: the user's choice to make
        raise ConfigError(f"cannot resume from {path}: {err}") from None
    saved.setdefault("batches_done", saved["sampler"]["batches_done"])  # a checkpoint from before TrainerState
    st = trainer.state
    st.load_state_dict(saved)
    if own_rng in state and trainer.cfg.faults.restore_rng:
        set_rng_state(state[own_rng])
    for n in names:
        trainer.callbacks[n].load_state_dict(state["callbacks"][n])
    done = bool(saved["stage_done"])
    if done and st.step < st.total_steps and not st.stopped:
        log.info(
            "stage %s finished at step %d; its budget is now %d steps: continuing", st.stage, st.step, st.total_steps
        )
        done = False
    elif not done:
        log.info("resumed stage %s from %s at step %d (global step %d)", st.stage, path, st.step, st.global_step)
    return done


# -- before a run directory is reused -----------------------------------------------------------------
IDENTITY_KEYS = ("model._target_", "task.")  # a difference here is another run, whatever the shapes say


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def config_differences(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` of every setting that differs (absent: ``"<absent>"``)."""
    a, b = _flat(old), _flat(new)
    missing = "<absent>"
    return {
        k: (a.get(k, missing), b.get(k, missing))
        for k in sorted(set(a) | set(b))
        if a.get(k, missing) != b.get(k, missing)
    }


def _describe(diff: dict[str, tuple[Any, Any]], limit: int = 12) -> str:
    items = [f"{k}: {old!r} -> {new!r}" for k, (old, new) in diff.items()]
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def run_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of every stage (``final`` and step folders, not ``best``), newest first."""
    found = []
    for p in (Path(run_dir) / "checkpoints").glob("*/*"):
        if p.name.startswith(".") or p.name == "best" or not (p / MARKER).exists():
            continue
        try:
            step = int(__import__("json").loads((p / "meta.json").read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found.append((step + (0.5 if p.name == "final" else 0.0), p.stat().st_mtime, p))
    return [p for *_, p in sorted(found, reverse=True)]


def _saved_run(run_dir: Path, allow_unverified: bool) -> tuple[Path, dict] | None:
    """The newest checkpoint that can be read, and its bookkeeping; None if there is none."""
    for path in run_checkpoints(run_dir):
        try:
            return path, unpack(Checkpointer.load_into(path, {"trainer": b""}, allow_unverified, local=True)["trainer"])
        except CheckpointError as err:
            log.debug("%s is not read for the resume checks: %s", path, err)
    return None


def _shape_mismatch(path: Path, model: nn.Module) -> list[str]:
    """Model tensors whose name or shape differ between a checkpoint and ``model`` (a few, for the message)."""
    saved = {
        k[len("model.") :]: tuple(getattr(m, "size", ()))
        for k, m in read_metadata(path).state_dict_metadata.items()
        if k.startswith("model.")
    }
    here = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    out = [f"{k} {saved[k]} -> {here[k]}" for k in sorted(set(saved) & set(here)) if saved[k] != here[k]]
    out += [f"{k} only in the checkpoint" for k in sorted(set(saved) - set(here))]
    out += [f"{k} only in this model" for k in sorted(set(here) - set(saved))]
    return out


def _clear_run(run_dir: Path) -> None:
    for name in ("checkpoints", "eval"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("metrics.jsonl", "config.yaml"):
        (run_dir / name).unlink(missing_ok=True)


def check_run_dir(cfg: Any, run_dir: str | Path, model: nn.Module, tasks: Sequence, is_main: bool = True) -> None:
    """Refuse to reuse a run directory that holds checkpoints, unless the run continues as it was.

    * ``trainer.resume=false``: refused (it would overwrite the run's checkpoints and mix both runs in
      ``metrics.jsonl``) unless ``trainer.overwrite=true``, which deletes them first and starts clean.
    * another model or task: refused, naming the differing settings with old and new values.
    * data whose fingerprints differ from those the checkpoint recorded: refused, with both, unless
      ``trainer.allow_data_change=true``.
    * other settings that differ (learning rate, budget, ...): a warning lists them.

    Reads only; called before anything in the directory is written. Raises ConfigError or DataFileError.
    """
    run_dir = Path(run_dir)
    t = cfg.trainer
    ckpt_dir = run_dir / "checkpoints"
    if not ckpt_dir.is_dir() or not any(p.is_file() for p in ckpt_dir.rglob("*")):
        return
    if not t.resume:
        if not t.get("overwrite", False):
            raise ConfigError(
                f"{run_dir} holds the checkpoints of an earlier run and trainer.resume=false would overwrite them "
                f"(final, best, the step folders) and mix both runs in metrics.jsonl. Choose a new paths.output_dir, "
                f"resume that run (trainer.resume=true), or add trainer.overwrite=true to delete its checkpoints, "
                f"metrics and evaluations and start clean"
            )
        if is_main:
            log.warning(
                "trainer.resume=false trainer.overwrite=true: deleting the checkpoints, metrics.jsonl and eval/ "
                "of the earlier run in %s",
                run_dir,
            )
            _clear_run(run_dir)
        return
    saved = _saved_run(run_dir, _allow_unverified(cfg))
    if saved is None:
        return  # nothing readable: the stage's resume says why (or starts afresh if nothing is complete)
    path, book = saved
    new = OmegaConf.to_container(cfg, resolve=True)
    diff = {
        k: v
        for k, v in config_differences(book.get("config") or {}, new).items()
        if not k.startswith(("paths.output_dir", "trainer.resume", "trainer.overwrite"))
    }
    identity = {k: v for k, v in diff.items() if k.startswith(IDENTITY_KEYS)}
    shapes = _shape_mismatch(path, model)
    if identity or shapes:
        shown = identity or {k: v for k, v in diff.items() if k.startswith(("model.", "task.", "data.", "stages."))}
        raise ConfigError(
            f"{run_dir} holds a run with another model or task, so it cannot be resumed with this config. Its config "
            f"differs in: {_describe(shown or diff) or 'nothing recorded'}"
            + (f" ({len(shapes)} model tensors differ, e.g. {'; '.join(shapes[:3])})" if shapes else "")
            + ". To start fresh, choose a new paths.output_dir, or replace this run with trainer.resume=false "
            "trainer.overwrite=true"
        )
    if diff and is_main:
        log.warning(
            "resuming %s with settings that differ from its checkpoint %s: %s",
            run_dir,
            path.relative_to(run_dir),
            _describe(diff, limit=40),
        )
    recorded, now = book.get("data"), data_fingerprints(tasks)
    if recorded is not None and recorded != now and not t.get("allow_data_change", False):
        changed = [
            f"{k}: checkpoint {recorded.get(k, 'absent')}, now {now.get(k, 'absent')}"
            for k in sorted(set(recorded) | set(now))
            if recorded.get(k) != now.get(k)
        ]
        raise DataFileError(
            f"the data differs from the data {path.relative_to(run_dir)} was trained on: {'; '.join(changed[:6])}"
            f"{f' and {len(changed) - 6} more' if len(changed) > 6 else ''}. Resuming would continue the run on other "
            f"data with other normalisation statistics. Restore the files, start a new run (another "
            f"paths.output_dir), or continue anyway with trainer.allow_data_change=true"
        )
    if recorded is not None and recorded != now:
        log.warning("resuming %s on data that differs from its checkpoint's (trainer.allow_data_change=true)", run_dir)
