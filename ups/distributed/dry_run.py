"""Check a parallel layout on a small machine before a cluster is spent on it.

The model is built on the meta device (no memory) and wrapped by the real ``parallelize()`` on
torch's fake process group of the requested world size, so FSDP2 sharding runs exactly as on the
cluster. The report gives the global batch and a per-rank memory estimate: device memory, and with
``parallelism.cpu_offload`` the host memory that then holds the sharded parameters, gradients and
AdamW state instead.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from ups.build import build_objectives, model_from_io
from ups.data.registry import get_family
from ups.distributed.env import DistEnv
from ups.distributed.parallelize import parallelize
from ups.models.lattice import task_token_shape
from ups.models.spec import TaskIO, spec_of
from ups.models.task_settings import task_patch

GB = 2**30


def task_io(cfg: Any) -> tuple[dict[str, TaskIO], int]:
    """Model inputs per task from the config alone (no data read), and the largest grid in points.

    The grid is the synthetic one the task file sizes (``synth.nx`` after ``reduced_resolution``),
    or 64 per axis when it names none: an estimate, which is all a dry run needs.
    """
    io, points = {}, 1
    for name, ds in cfg.task.datasets.items():
        fam = get_family(ds.family)
        k = 1 if fam.steady else ds.initial_step
        side = math.ceil(ds.synth.nx / ds.reduced_resolution) if ds.synth.nx else 64
        io[name] = TaskIO(k * len(fam.channels), len(fam.channels), fam.dim, (side,) * fam.dim)
        points = max(points, side**fam.dim)
    return io, points


def activation_bytes(cfg: Any, io: dict[str, TaskIO], points: int) -> float | None:
    """Rough activation memory of one micro-batch: s*b*h*(34 + 5*a*s/h) bytes per transformer layer
    in 16-bit (Korthikanti et al. 2022) over the largest task's s tokens, doubled for fp32; only
    layer inputs when checkpointing. None for a model without the latent surrogate's sizes."""
    m, b = cfg.model, cfg.trainer.batch_size
    if not all(k in m for k in ("hidden", "heads", "depth", "patch", "lattice", "encoder_layers", "decoder_layers")):
        return None
    width = 2 if cfg.hardware.precision == "bf16" else 4
    cells = bool(m.get("channel_cells", False))
    by_task = m.get("by_task") or {}
    s = max(
        math.prod(task_token_shape(t, task_patch(by_task, n, t.dim, m.patch), m.lattice, cells)) for n, t in io.items()
    )

    def layer(n: int) -> float:
        return n * b * m.hidden * (34 + 5 * m.heads * n / m.hidden) * width / 2

    blocks = m.depth + m.encoder_layers + m.decoder_layers
    tokens = blocks * (2 * s * b * m.hidden * width if cfg.hardware.activation_checkpointing else layer(s))
    # Every point is embedded (a two-layer MLP) and decoded (its cell's coefficients times a basis):
    # a few hidden-wide vectors per point, which dominate on fine grids.
    return tokens + 4 * points * b * m.hidden * width


def dry_run(cfg: Any) -> dict:
    """Build and parallelize the model for ``cfg.parallelism`` on a fake group; print and return the report."""
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    p, t = cfg.parallelism, cfg.trainer
    world = p.nodes * p.ranks_per_node
    io, points = task_io(cfg)
    objectives = build_objectives(cfg.stages, p.strategy)
    with torch.device("meta"):  # the run's builder (ups/build.py), heads included, on sizes from the config
        model = model_from_io(cfg.model, io, objectives)
    total = sum(q.numel() for q in model.parameters())
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        env = DistEnv(rank=0, local_rank=0, world_size=world, local_world_size=p.ranks_per_node)
        if p.strategy == "fsdp2":
            model = parallelize(model, cfg, env, torch.device("cpu"))
            local = sum(q.to_local().numel() if hasattr(q, "to_local") else q.numel() for q in model.parameters())
            gathered = max((sum(q.numel() for q in b.parameters()) for b in spec_of(model).blocks(model)), default=0)
        else:  # DDP replicates; wrapping meta tensors would only repeat that
            local, gathered = total, 0
    finally:
        dist.destroy_process_group()
    width = 2 if cfg.hardware.precision == "bf16" else 4
    # fp32 master shards, their gradients and AdamW's two moments: on the device, or with FSDP2's
    # CPUOffloadPolicy in host memory (pinned when configured), where the optimizer steps
    sharded = {"params": local * 4, "grads": local * 4, "adamw_state": local * 8}
    offload = bool(p.cpu_offload)  # validate() refused it outside fsdp2
    mem = {} if offload else dict(sharded)
    mem["gathered_block"] = 2 * gathered * width
    activations = activation_bytes(cfg, io, points)
    if activations is not None:
        mem["activations"] = activations
    host = sharded if offload else {}
    report = {
        "layout": p.name,
        "strategy": p.strategy,
        "nodes": p.nodes,
        "ranks_per_node": p.ranks_per_node,
        "world_size": world,
        "batch_size": t.batch_size,
        "accum_steps": t.accum_steps,
        "global_batch": t.batch_size * t.accum_steps * world,
        "parameters": total,
        "parameters_per_rank": local,
        "largest_grid_points": points,
        "cpu_offload": offload,
        "memory_gb": {k: v / GB for k, v in mem.items()},
        "memory_per_rank_gb": sum(mem.values()) / GB,
        "host_memory_gb": {k: v / GB for k, v in host.items()},
        "host_memory_per_rank_gb": sum(host.values()) / GB,
        "host_memory_per_node_gb": sum(host.values()) * p.ranks_per_node / GB,
    }
    lines = [
        f"dry run: {p.name} ({p.strategy}), {p.nodes} node(s) x {p.ranks_per_node} ranks = {world}",
        f"  global batch = {t.batch_size} per device x {t.accum_steps} accumulation x {world} ranks "
        f"= {report['global_batch']}",
        f"  parameters {total / 1e6:.2f}M total, {local / 1e6:.2f}M held per rank",
        "  per-rank memory estimate (GB): " + ", ".join(f"{k} {v:.3f}" for k, v in report["memory_gb"].items()),
        f"  total ≈ {report['memory_per_rank_gb']:.2f} GB per rank "
        + (
            f"(activations: a rough formula, grid of {points} points)"
            if activations is not None
            else "(activations not estimated for this model family)"
        ),
    ]
    if offload:
        pinned = "pinned" if p.cpu_offload_pin_memory else "pageable"
        lines += [
            "  offloaded to host memory (parallelism.cpu_offload, "
            + pinned
            + ", GB): "
            + ", ".join(f"{k} {v:.3f}" for k, v in report["host_memory_gb"].items()),
            f"  host total ≈ {report['host_memory_per_rank_gb']:.2f} GB per rank, "
            f"{report['host_memory_per_node_gb']:.2f} GB per node of {p.ranks_per_node} ranks",
        ]
    print("\n".join(lines), flush=True)
    return report
