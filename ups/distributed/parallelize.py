"""The one place that wraps a model for speed and parallelism.

Order matters and is fixed: activation checkpointing first (so compile traces the recomputing
forward), then torch.compile per block (or of the whole forward), then FSDP2 per block or DDP around the whole model. AC and
compile patch blocks in place, so parameter names and checkpoints are the same with them on or off.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from ups.distributed.env import DistEnv
from ups.errors import ConfigError
from ups.models.spec import spec_of


def apply_ac(model: nn.Module, every: int = 1) -> None:
    """Recompute the activations of every ``every``-th block (the model's spec names its blocks) in
    backward instead of storing them: 1 saves the most memory, larger values cost less recompute."""
    for i, block in enumerate(spec_of(model).blocks(model)):
        if i % every:
            continue
        forward = block.forward
        block.forward = lambda *a, _f=forward, **k: checkpoint(_f, *a, use_reentrant=False, **k)


def apply_compile(model: nn.Module, mode: str = "default", scope: str = "blocks") -> None:
    """Compile each block (``scope="blocks"``: small graphs compile fast and identical blocks share
    code) or the model's whole forward (``"model"``; the backward is compiled with it): one graph per
    task, whose shapes are static because each batch holds one task, so most of a step's small
    operations fuse (ops per step in docs/benchmarks.md). Whatever fails to compile (no C compiler,
    an unsupported operation) runs eagerly, with dynamo's warning in the log, instead of ending the
    run; ``compile_report`` says so after the first step."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    compile_mode = None if mode == "default" else mode
    if scope == "model":
        # static shapes per task: one graph each instead of a dynamic-shape graph after the second task;
        # room for each task's training, evaluation (no autograd) and last-partial-batch graphs before
        # dynamo gives up on a new shape and runs it eagerly (with its warning)
        tasks = len(getattr(model, "tasks", ()) or ())
        dynamo = torch._dynamo.config
        limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"  # torch < 2.6
        setattr(dynamo, limit, max(getattr(dynamo, limit), 4 * tasks + 8))
        model.compile(mode=compile_mode, dynamic=False)
        return
    if scope != "blocks":
        raise ConfigError(f"hardware.compile_scope={scope!r}; choose blocks or model")
    for block in spec_of(model).blocks(model):
        block.compile(mode=compile_mode)


def fsdp_policy(precision: str) -> MixedPrecisionPolicy:
    """bf16 parameters in compute, gradients reduced in fp32 (the sharded master weights stay fp32)."""
    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def apply_fsdp(model: nn.Module, device: torch.device, world_size: int, precision: str) -> nn.Module:
    """Shard each block, then the spec's further units (e.g. encoder, decoder), then the rest at the root."""
    from torch.distributed.device_mesh import init_device_mesh

    # The model returns a view; UPS never modifies outputs in place (ups/objectives/), which is what
    # FSDP2 warns about on every forward.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (world_size,))
    policy = fsdp_policy(precision)
    spec = spec_of(model)
    for unit in [*spec.blocks(model), *spec.shard_units(model)]:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def apply_ddp(model: nn.Module, device: torch.device, find_unused: bool) -> nn.Module:
    """Replicate the model. ``find_unused``: some parameters get no gradient in a step (other tasks'
    heads, a group a stage freezes after wrapping, another stage's head), and DDP must not wait for them."""
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=find_unused
    )


def parallelize(model: nn.Module, cfg: Any, env: DistEnv, device: torch.device) -> nn.Module:
    """Apply AC, compile and the data-parallel strategy as configured; returns the module to train.

    With FSDP2 the model is sharded in place (the returned object is the same); with DDP the
    returned wrapper holds the model as ``.module``.
    """
    hw, strategy = cfg.hardware, cfg.parallelism.strategy
    if hw.activation_checkpointing:
        apply_ac(model, hw.checkpoint_every)
    if hw.compile:
        apply_compile(model, hw.compile_mode, hw.compile_scope)
    if strategy == "fsdp2":
        return apply_fsdp(model, device, env.world_size, hw.precision)
    if strategy == "ddp" and env.distributed:
        spec = spec_of(model)
        heads = spec.stage_heads(model) if spec.stage_heads else {}
        find_unused = len(cfg.task.datasets) > 1 or any(s.freeze for s in cfg.stages.values()) or bool(heads)
        return apply_ddp(model, device, find_unused)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` (what :func:`parallelize` returned, or the model it sharded in place) is
    sharded by FSDP2: each forward then gathers parameters from every rank, so no rank may run one
    alone (a cache built on rank 0) or skip one alone (an out-of-memory error mid-forward)."""
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Turn gradient synchronisation off for accumulation micro-steps (DDP or FSDP2 alike)."""
    if enabled:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield
