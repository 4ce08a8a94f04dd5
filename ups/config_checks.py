"""Cross-field rules of a composed config (what a typed schema cannot say), checked once before a run."""

from __future__ import annotations

import math
from typing import Any

from ups.errors import ConfigError

_CHOICES = {
    "data.sampler.strategy": ("proportional", "balanced", "temperature"),
    "data.sampler.mode": ("task", "mixed"),
    "hardware.device": ("auto", "cpu", "cuda"),
    "hardware.precision": ("fp32", "bf16"),
    "hardware.sdpa_backend": ("auto", "flash", "efficient", "math", "cudnn"),
    "optim.name": ("adamw",),
    "optim.schedule": ("cosine", "constant", "cosine_time"),
    "parallelism.strategy": ("none", "ddp", "fsdp2"),
    "parallelism.backend": ("auto", "nccl", "gloo"),
    "trainer.on_oom": ("skip", "stop"),
    "trainer.on_nonfinite": ("skip", "stop"),
}
_POSITIVE = (
    "trainer.max_steps",
    "trainer.batch_size",
    "trainer.accum_steps",
    "trainer.log_every",
    "trainer.max_consecutive_skips",
    "trainer.keep_last_k",
    "hardware.checkpoint_every",
    "parallelism.nodes",
    "parallelism.ranks_per_node",
    "parallelism.timeout_s",
)


def _unknown_keys(node: Any, path: str = "") -> list[str]:
    """Keys of typed (dataclass) nodes that their schema does not have.

    Hydra's ``+key=value`` adds a key even beside a schema, so ``+trainer.max_step=10`` would
    compose and then be ignored; here it is an error, with the field meant when one is close.
    """
    import dataclasses
    import difflib

    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig):
        return []
    out, schema = [], OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        fields = [f.name for f in dataclasses.fields(schema)]
        for key in set(node.keys()) - set(fields):
            close = difflib.get_close_matches(str(key), fields, n=1)
            out.append(f"{path}{key}" + (f" (did you mean {path}{close[0]}?)" if close else ""))
    for key in node.keys():
        if not OmegaConf.is_missing(node, key):
            out += _unknown_keys(node._get_node(key), f"{path}{key}.")
    return out


def resolve_global_batch(cfg: Any, world_size: int) -> None:
    """With ``trainer.global_batch`` set, set ``trainer.accum_steps`` so that per-device batch x
    accumulation x ``world_size`` equals it; an impossible combination is a :class:`ConfigError`."""
    t = cfg.trainer
    if t.global_batch is None:
        return
    per_step = t.batch_size * world_size
    if t.global_batch < 1 or t.global_batch % per_step:
        fits = [b for b in range(1, t.global_batch // world_size + 1) if t.global_batch % (b * world_size) == 0]
        raise ConfigError(
            f"trainer.global_batch={t.global_batch} is not a multiple of trainer.batch_size x world size = "
            f"{t.batch_size} x {world_size} = {per_step}, so no whole number of accumulation steps reaches it; "
            + (
                f"per-device batches that do: {', '.join(map(str, fits[-6:]))}"
                if fits
                else f"with {world_size} ranks the global batch must be at least {world_size}"
            )
        )
    t.accum_steps = t.global_batch // per_step


def validate(cfg: Any) -> None:
    """Check the rules that tie fields together; raise :class:`ConfigError` naming the key."""
    from omegaconf import OmegaConf

    def get(key: str) -> Any:
        return OmegaConf.select(cfg, key)

    unknown = _unknown_keys(cfg)
    if unknown:
        raise ConfigError(
            f"unknown setting {', '.join(sorted(unknown))}: not a field of its schema, so it would be "
            "ignored; docs/configuration.md lists every option"
        )

    for key, options in _CHOICES.items():
        if get(key) not in options:
            raise ConfigError(f"{key}={get(key)!r} is not one of {', '.join(options)}")
    for key in _POSITIVE:
        if get(key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {get(key)}")
    if get("trainer.eval_every") is not None and get("trainer.eval_every") < 1:
        raise ConfigError(
            f"trainer.eval_every must be at least 1 (null: once per epoch), got {get('trainer.eval_every')}"
        )
    for key in ["optim.lr"] + [f"stages.{n}.lr" for n in cfg.stages]:
        lr = get(key)
        if lr is not None and not (math.isfinite(lr) and lr >= 0):
            raise ConfigError(f"{key} must be a finite number >= 0, got {lr}")
    for key in ("data.val_fraction", "data.test_fraction"):
        if not 0.0 < get(key) < 0.5:
            raise ConfigError(f"{key} must lie in (0, 0.5), got {get(key)}")
    world = cfg.parallelism.nodes * cfg.parallelism.ranks_per_node
    resolve_global_batch(cfg, world)
    if cfg.parallelism.strategy == "none" and world > 1:
        raise ConfigError(
            f"parallelism.strategy=none runs one process, but nodes x ranks_per_node = {world}; "
            "choose parallelism=ddpN or fsdp2_N"
        )
    if cfg.parallelism.strategy == "fsdp2" and cfg.data.sampler.mode != "task":
        # FSDP gathers parameters module by module: ranks running different tasks would issue
        # different collectives and hang.
        raise ConfigError("parallelism.strategy=fsdp2 needs data.sampler.mode=task")
    if cfg.parallelism.cpu_offload and cfg.parallelism.strategy != "fsdp2":
        # CPUOffloadPolicy belongs to FSDP2's fully_shard; DDP and one process keep a full copy on the device
        raise ConfigError(
            f"parallelism.cpu_offload=true needs parallelism.strategy=fsdp2 (FSDP2's own offload "
            f"policy), but parallelism={cfg.parallelism.name} has strategy={cfg.parallelism.strategy}; "
            "choose parallelism=fsdp2_N or drop parallelism.cpu_offload"
        )
    if not cfg.task.datasets:
        raise ConfigError(f"task={cfg.task.name} lists no datasets")
    for name, weight in cfg.data.sampler.weights.items():
        if name not in cfg.task.datasets:
            raise ConfigError(
                f"data.sampler.weights.{name}: task={cfg.task.name} has no dataset {name!r}; "
                f"its datasets: {', '.join(cfg.task.datasets)}"
            )
        if not (math.isfinite(weight) and weight > 0):
            raise ConfigError(f"data.sampler.weights.{name} must be a finite number > 0, got {weight}")
    if not cfg.stages:
        raise ConfigError("no stages configured: choose one with stage=...")
    for name, stage in cfg.stages.items():
        if stage.steps is not None and stage.steps < 0:
            raise ConfigError(f"stages.{name}.steps must be >= 0 (0 skips the stage), got {stage.steps}")
        if "_target_" not in stage.objective:
            raise ConfigError(f"stages.{name}.objective needs a _target_ (e.g. ups.objectives.NextStep)")
    if all(stage.steps == 0 for stage in cfg.stages.values()):
        raise ConfigError("every stage has steps=0: nothing would be trained")
    if "_target_" not in cfg.model:
        raise ConfigError(
            "model has no _target_: a conf/model/ file starts from its family's schema "
            "(defaults: [/schema/model/<family>@_here_]); see docs/architecture.md"
        )
    if cfg.trainer.time_budget_s is not None and cfg.trainer.time_budget_s <= 0:
        raise ConfigError(f"trainer.time_budget_s must be positive, got {cfg.trainer.time_budget_s}")
    if cfg.optim.schedule == "cosine_time" and cfg.trainer.time_budget_s is None:
        raise ConfigError(
            "optim.schedule=cosine_time decays over the wall-clock budget: set trainer.time_budget_s "
            "(or choose optim.schedule=cosine, which decays over trainer.max_steps)"
        )
    for name, ds in cfg.task.datasets.items():
        from ups.data.registry import FAMILIES

        if ds.family not in FAMILIES:
            raise ConfigError(f"task.datasets.{name}.family={ds.family!r} is not one of {', '.join(FAMILIES)}")
        for key in ("reduced_resolution", "reduced_resolution_t", "reduced_batch", "initial_step"):
            if getattr(ds, key) < 1:
                raise ConfigError(f"task.datasets.{name}.{key} must be at least 1")
