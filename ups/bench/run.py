"""``python -m ups.bench``: every variant of the composed run measured in one process, or one
scaling axis (``bench.axis``), with the date, the device and the exact command beside the figures."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ups.bench.common import load_average, machine_info
from ups.bench.flops import datasheet_peak, measured_matmul_flops
from ups.bench.harness import measure
from ups.bench.variants import VARIANTS, check_names, variant_overrides
from ups.config import validate
from ups.distributed.env import DistEnv, resolve_device
from ups.errors import ConfigError
from ups.records import read_records
from ups.training.startup import process_age_s

AXES = {"batch": "trainer.batch_size={}", "model": "model={}", "tasks": "task={}", "ranks": "parallelism={}"}


def environment(device: torch.device, cfg: DictConfig) -> dict[str, Any]:
    """Where and when the figures were measured, and the command that measured them."""
    return {
        **machine_info(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "command": " ".join(["python -m ups.bench", *HydraConfig.get().overrides.task]),
        "model": cfg.model._target_,
        "task": cfg.task.name,
        "batch_size": cfg.trainer.batch_size,
    }


def peaks(device: torch.device) -> dict[str, Any]:
    """The device's peaks: its data sheet's bf16 figure (GPUs) and matmuls measured in this process."""
    sheet, name = datasheet_peak(device)
    out = {"datasheet_bf16": sheet, "device_name": name, "measured_fp32": measured_matmul_flops(device, torch.float32)}
    if device.type == "cuda":
        out["measured_bf16"] = measured_matmul_flops(device, torch.bfloat16)
    return out


def _compose(overrides: list[str]) -> DictConfig:
    cfg = compose(config_name="train", overrides=list(HydraConfig.get().overrides.task) + overrides)
    validate(cfg)
    return cfg


def same_measurements(rows: list[dict]) -> list[tuple[str, str]]:
    """Pairs of rows whose real pass took exactly the same seconds for the same samples: two timed
    passes of real work never agree to the nanosecond, so such a pair is one figure reported twice."""
    seen: dict[tuple, str] = {}
    pairs = []
    for r in rows:
        if r.get("status") != "ok" or "real_s" not in r:
            continue
        key = (r["real_s"], r["real_samples"])
        if key in seen:
            pairs.append((seen[key], r["variant"]))
        else:
            seen[key] = r["variant"]
    return pairs


def run_variants(cfg: DictConfig, device: torch.device, partial: Path | None = None) -> dict[str, Any]:
    """Measure each of ``bench.variants``; a variant that fails is a row with its error, not the end.
    ``partial``: a JSON file, and its table beside it (.md), rewritten after each variant."""
    b = cfg.bench
    check_names(b.variants)
    stage = next(iter(cfg.stages))
    out = {"info": environment(device, cfg), "peaks": peaks(device), "rows": []}
    # The baseline again at the end: the drift between its two runs is how much the machine changed
    # meanwhile (other work, clocks), and the ratios are taken against their mean.
    names = list(b.variants) + (["baseline"] if "baseline" in b.variants and len(b.variants) > 1 else [])
    for i, name in enumerate(names):
        print(f"[bench] {name}: {VARIANTS[name][1]}", flush=True)
        again = i == len(b.variants)  # the appended baseline
        row: dict[str, Any] = {"variant": "baseline (again)" if again else name, "what": VARIANTS[name][1]}
        try:
            vcfg = _compose(variant_overrides(name, stage))
            # every variant counts its own work: a latent cache skips the encoder, and the batches
            # of a pass are a mix of tasks whose steps cost differently
            result = measure(vcfg, device, b.warmup_steps, b.steps, work=True)
            row.update(result, status="ok", precision=vcfg.hardware.precision)
        except (RuntimeError, ConfigError, ValueError, NotImplementedError) as err:
            print(f"[bench] {name} failed: {type(err).__name__}: {err}", flush=True)  # e.g. a kernel this device lacks
            row.update(status="failed", error=f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}")
        out["rows"].append(row)
        if partial is not None:  # what a run cut short by its time limit still leaves behind: JSON and table
            from ups.bench import report

            summarize(out, quiet=True)
            partial.write_text(json.dumps(out, indent=1, default=str))
            partial.with_suffix(".md").write_text(report.variants_markdown(out))
    summarize(out)
    out["info"]["loadavg_after"] = load_average()
    return out


def summarize(out: dict[str, Any], quiet: bool = False) -> None:
    """Ratios to the baseline and MFU of the rows measured so far (again after each variant)."""
    ok = [r for r in out["rows"] if r["status"] == "ok"]
    out["flops"] = ok[0]["work"] if ok else None  # the first variant's, for the formulas-vs-counter line
    out["same_measurement"] = same_measurements(out["rows"])
    for a, c in [] if quiet else out["same_measurement"]:
        print(
            f"[bench] WARNING: {a} and {c} report the same real-pass time to the nanosecond: one measurement "
            "reported twice, not two",
            flush=True,
        )
    bases = [r["samples_per_s"] for r in ok if r["variant"].startswith("baseline")]
    base = sum(bases) / len(bases) if bases else None
    if len(bases) == 2:
        out["baseline_drift"] = bases[1] / bases[0] - 1
    for row in ok:
        if base:
            row["ratio"] = row["samples_per_s"] / base
        _mfu(row, out["peaks"])


def _mfu(row: dict[str, Any], peaks: dict[str, Any]) -> None:
    """The FLOPs this row's real pass did over the seconds it took, against the measured matmul peak
    of its precision and the data sheet's bf16 peak."""
    achieved = row["work"]["analytic"] / row["real_s"]
    row["model_flops_per_s"] = achieved
    row["mfu_measured"] = achieved / peaks.get(f"measured_{row['precision']}", peaks["measured_fp32"])
    if peaks["datasheet_bf16"]:
        row["mfu_datasheet_bf16"] = achieved / peaks["datasheet_bf16"]


def _train_rate(overrides: list[str], work: Path) -> dict[str, Any]:
    """Samples/s of a real ``ups.train`` run (for an axis that needs more than one process)."""
    run_dir = work / "run"
    cmd = [
        sys.executable,
        "-m",
        "ups.train",
        *HydraConfig.get().overrides.task,
        *overrides,
        f"paths.output_dir={run_dir}",
        "trainer.log_every=5",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
    train = [r for r in read_records(run_dir) if r.get("kind") == "train"][1:]  # the first window holds the start-up
    return {
        "samples_per_s": sum(r["samples_per_s"] for r in train) / len(train),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in train),
        "world_size": train[-1]["world_size"],
        "global_batch": train[-1]["global_batch"],
    }


def run_axis(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """Samples/s and peak memory of the composed run at each of ``bench.points`` along ``bench.axis``."""
    b = cfg.bench
    if b.axis not in AXES or not b.points:
        raise ConfigError(
            f"bench.axis must be one of {', '.join(AXES)} with bench.points set, got {b.axis!r} and {list(b.points)}"
        )
    out = {"info": {**environment(device, cfg), "axis": b.axis}, "axis": b.axis, "rows": []}
    if b.axis != "ranks":  # MFU along the axis (issue 22: MFU against batch), each point's own FLOPs
        out["peaks"] = peaks(device)
    for value in b.points:
        print(f"[bench] {b.axis}={value}", flush=True)
        row: dict[str, Any] = {"value": str(value)}
        try:
            override = AXES[b.axis].format(value)
            if b.axis == "ranks":
                with tempfile.TemporaryDirectory(prefix="ups-bench-") as work:
                    row.update(_train_rate([override, f"trainer.max_steps={b.warmup_steps + b.steps}"], Path(work)))
            else:
                pcfg = _compose([override])
                row.update(measure(pcfg, device, b.warmup_steps, b.steps, work=True), precision=pcfg.hardware.precision)
                _mfu(row, out["peaks"])
            row["status"] = "ok"
        except (RuntimeError, ConfigError, ValueError) as err:
            print(f"[bench] {b.axis}={value} failed: {type(err).__name__}: {err}", flush=True)
            row.update(status="failed", error=f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}")
        out["rows"].append(row)
    out["info"]["loadavg_after"] = load_average()
    return out


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Measure as configured, print the tables, write JSON (run directory) and the docs section."""
    from ups.bench import report

    started = process_age_s()
    device = resolve_device(cfg.hardware.device, DistEnv())
    if cfg.hardware.threads:
        torch.set_num_threads(cfg.hardware.threads)
    t0 = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    result = run_axis(cfg, device) if cfg.bench.axis else run_variants(cfg, device, run_dir / "bench_partial.json")
    result["info"].update(config_s=started, bench_s=round(time.perf_counter() - t0, 1))
    name = f"bench_{cfg.bench.axis}" if cfg.bench.axis else "bench"
    (run_dir / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    text = (
        report.axis_markdown(result, cfg.bench.plot_dir or run_dir)
        if cfg.bench.axis
        else report.variants_markdown(result)
    )
    print(text, flush=True)
    (run_dir / f"{name}.md").write_text(text)
    if cfg.bench.docs:
        key = f"{name}:{'gpu' if device.type == 'cuda' else 'cpu'}"
        report.replace_section(Path(cfg.bench.docs), key, text)
        print(f"[bench] wrote the section {key!r} of {cfg.bench.docs}; JSON: {run_dir / (name + '.json')}", flush=True)
    return result
