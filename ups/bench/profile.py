"""``python -m ups.bench.profile [overrides]``: where a training step's time goes, per variant.

For each of ``bench.variants`` (the bench's names; e.g. ``bench.variants=[baseline,all]``), the run is
built as ``python -m ups.bench`` builds it, warmed up (``bench.warmup_steps``, compilation included),
and ``bench.steps`` loader-fed steps run under ``torch.profiler``. Printed and written to
``profile.json`` / ``profile.md`` in the run directory:

- ops per step: aten ops that launch a kernel in one step (device-independent, ``ups.bench.ops``), for a
  compiled variant the kernels its step launches as it runs, and the eager count beside it;
- on CUDA, kernels per step (what the GPU ran: after compilation and fusion; copies and memsets
  counted apart), the GPU's busy share of
  the wall time (the rest is launch overhead, host work and waiting), host-device syncs per step;
- the top operations by self time (device time on CUDA, CPU time otherwise).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ups.config import register_configs

register_configs()
_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def _device_time(e: Any) -> float:
    return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)


def profile_variant(cfg: DictConfig, device: torch.device, warmup: int, steps: int, top: int = 12) -> dict[str, Any]:
    """Profile ``steps`` steps of one composed configuration after ``warmup``; see the module's docstring."""
    from torch.profiler import ProfilerActivity, profile

    from ups.bench.harness import Bench, prepare_compile, sync

    prepare_compile(cfg)  # as the bench does: a compiled variant profiled after another compiles afresh
    with tempfile.TemporaryDirectory(prefix="ups-profile-") as work:
        bench = Bench(cfg, device, Path(work))
        bench.first_step()
        for _ in range(warmup):
            bench.step(next(bench.batches))
        cuda = device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        sync(device)
        bench.replay = []
        with profile(activities=activities) as prof:
            for _ in range(steps):
                batch = next(bench.batches)
                bench.replay.append(batch)
                bench.step(batch)
            sync(device)
        work_counts = bench.work()  # eager ops of the same batches, weighted as they ran
        del bench
    events = prof.events()
    out: dict[str, Any] = {
        "steps": steps,
        "ops_per_step": work_counts["ops_per_step"],
        "flops_per_sample": work_counts["flops_per_sample"],
        "eager_ops_per_step": work_counts["eager_ops_per_step"],
        "generated_kernels_per_step": work_counts["generated_kernels_per_step"],
        "top_launches": work_counts["top_ops"],
    }
    wall_us = max(e.time_range.end for e in events) - min(e.time_range.start for e in events)
    out["wall_ms_per_step"] = wall_us / 1000 / steps
    if cuda:
        on_gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        kernels = [e for e in on_gpu if not e.name.startswith(("Memcpy", "Memset"))]  # copies apart
        busy_us = sum(e.time_range.end - e.time_range.start for e in on_gpu)
        out.update(
            kernels_per_step=len(kernels) / steps,
            copies_per_step=(len(on_gpu) - len(kernels)) / steps,
            gpu_busy_share=busy_us / wall_us,
            syncs_per_step=sum(1 for e in events if e.name in _SYNCS) / steps,
            mean_kernel_us=busy_us / max(1, len(kernels)),
        )
        by_name: Counter[str] = Counter()
        for e in kernels:
            by_name[e.name[:80]] += e.time_range.end - e.time_range.start
        out["top_kernels_ms_per_step"] = [(k, v / 1000 / steps) for k, v in by_name.most_common(top)]
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=top)
    out["top_ops_table"] = table
    return out


def markdown(info: dict, rows: dict[str, dict]) -> str:
    lines = [
        f"Measured {info['date']} on {info['device']}{' (' + info['gpu'] + ')' if info.get('gpu') else ''}, torch "
        f"{info['torch']}. Command: `{info['command']}`",
        "",
        "| variant | wall ms/step (profiled) | ops/step (as run) | kernels/step | mean kernel µs | GPU busy | "
        "syncs/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | |")
            continue

        def f(k: str, fmt: str) -> str:
            return fmt.format(r[k]) if k in r else "–"

        lines.append(
            f"| {name} | {r['wall_ms_per_step']:.1f} | {r['ops_per_step']:,.0f} | "
            f"{f('kernels_per_step', '{:,.0f}')} | {f('mean_kernel_us', '{:.1f}')} | "
            f"{f('gpu_busy_share', '{:.0%}')} | {f('syncs_per_step', '{:.1f}')} |"
        )
    counted = [
        f"`{name}` {r['ops_per_step']:,.0f} as run ({r['generated_kernels_per_step']:,.0f} generated kernels), "
        f"{r['eager_ops_per_step']:,.0f} eager"
        for name, r in rows.items()
        if "eager_ops_per_step" in r
    ]
    if counted:
        lines += [
            "",
            "Ops per step (ups/bench/ops.py; a compiled step's are the kernels it launches): "
            + "; ".join(counted)
            + ".",
        ]
    for name, r in rows.items():
        if "top_ops_table" in r:
            lines += [
                "",
                f"Top operations, `{name}` (self time, {r['steps']} steps):",
                "",
                "```",
                r["top_ops_table"].rstrip(),
                "```",
            ]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://ups.conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """Profile every ``bench.variants`` entry; write ``profile.{json,md}`` in the run directory."""
    from ups.errors import exit_on_error

    with exit_on_error():
        _profile(cfg)


def _profile(cfg: DictConfig) -> None:
    from hydra import compose

    from ups.bench.run import environment
    from ups.bench.variants import check_names, variant_overrides
    from ups.config import validate
    from ups.distributed.env import DistEnv, resolve_device
    from ups.errors import ConfigError

    device = resolve_device(cfg.hardware.device, DistEnv())
    if cfg.hardware.threads:
        torch.set_num_threads(cfg.hardware.threads)
    check_names(cfg.bench.variants)
    info = environment(device, cfg)
    info["command"] = info["command"].replace("python -m ups.bench", "python -m ups.bench.profile", 1)
    rows: dict[str, dict] = {}
    stage = next(iter(cfg.stages))
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = ""
    for name in cfg.bench.variants:
        print(f"[profile] {name}", flush=True)
        try:
            vcfg = compose(
                config_name="train", overrides=list(HydraConfig.get().overrides.task) + variant_overrides(name, stage)
            )
            validate(vcfg)
            rows[name] = profile_variant(vcfg, device, cfg.bench.warmup_steps, cfg.bench.steps)
        except (RuntimeError, ConfigError, ValueError, NotImplementedError) as err:
            print(f"[profile] {name} failed: {type(err).__name__}: {err}", flush=True)
            rows[name] = {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"}
        # after each variant, so a run cut short by its time limit keeps the variants it finished
        (run_dir / "profile.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1, default=str))
        text = markdown(info, rows)
        (run_dir / "profile.md").write_text(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
