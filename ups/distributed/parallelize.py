"""The one place that wraps a model for speed and parallelism.

Order matters and is fixed: activation checkpointing first (so compile traces the recomputing
forward), then torch.compile per block (or of the whole forward), then FSDP2 per block or DDP around the whole model. AC and
compile patch blocks in place, so parameter names and checkpoints are the same with them on or off.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Iterator

import torch
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from ups.distributed.env import DistEnv
from ups.errors import ConfigError
from ups.models.spec import spec_of

log = logging.getLogger(__name__)


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


def fsdp_offload(cpu_offload: bool, pin_memory: bool, device: torch.device) -> OffloadPolicy:
    """FSDP2's own offload policy: with ``cpu_offload`` the sharded parameters, their gradients and
    (the optimizer being built on those parameters) the AdamW state stay in host memory; each unit's
    shard is copied to ``device`` for its all-gather and its gradient shard back after the
    reduce-scatter, and the optimizer steps on the CPU. Pinning needs an accelerator (torch raises
    "Cannot access accelerator device" without one), so on a CPU device it is off: there the policy
    moves nothing but runs the same code path, which is what the CPU tests check."""
    if not cpu_offload:
        return OffloadPolicy()
    return CPUOffloadPolicy(pin_memory=pin_memory and device.type != "cpu")


def fsdp_mesh(device: torch.device, world_size: int, cpu_offload: bool):
    """The 1-D mesh FSDP2 shards over. Offloaded on a GPU, the gradients' norm (clipping) and any
    other DTensor operation on the host-resident shards run a collective on CPU tensors, which NCCL
    cannot: the mesh then gets its own group with gloo for CPU tensors beside NCCL for CUDA ones (as
    torchtitan does for its CPU offload). Elsewhere the default group serves."""
    from torch.distributed.device_mesh import init_device_mesh

    override = None
    if cpu_offload and device.type == "cuda":
        override = {0: "cpu:gloo,cuda:nccl"}
    return init_device_mesh(device.type, (world_size,), backend_override=override)


def apply_fsdp(
    model: nn.Module,
    device: torch.device,
    world_size: int,
    precision: str,
    cpu_offload: bool = False,
    pin_memory: bool = True,
) -> nn.Module:
    """Shard each block, then the spec's further units (e.g. encoder, decoder), then the rest at the
    root, every unit with the same mixed-precision and offload policies (so no unit's shards stay
    behind on the GPU while the optimizer steps the others on the CPU)."""
    # The model returns a view; UPS never modifies outputs in place (ups/objectives/), which is what
    # FSDP2 warns about on every forward.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = fsdp_mesh(device, world_size, cpu_offload)
    policies = {"mp_policy": fsdp_policy(precision), "offload_policy": fsdp_offload(cpu_offload, pin_memory, device)}
    spec = spec_of(model)
    for unit in [*spec.blocks(model), *spec.shard_units(model)]:
        fully_shard(unit, mesh=mesh, **policies)
    fully_shard(model, mesh=mesh, **policies)
    if cpu_offload:
        log.info(
            "FSDP2 CPU offload: sharded parameters, gradients and optimizer state in host memory (%s)",
            "pinned" if policies["offload_policy"].pin_memory else "not pinned",
        )
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
        p = cfg.parallelism
        return apply_fsdp(model, device, env.world_size, hw.precision, p.cpu_offload, p.cpu_offload_pin_memory)
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
