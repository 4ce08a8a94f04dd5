"""Loader benchmark: raw HDF5 + frozen encoder vs the latent cache.

    python -m ups.bench.loader [--data-dir DIR] [--tasks advection1d,darcy2d] [--models tiny,small]
                               [--device auto|cpu|cuda] [--threads N] [--json out.json]

For each model size and task (default synthetic data, generated into ``--data-dir`` or a temporary
folder) it measures samples/s of one shuffled pass over the training windows when
1. reading HDF5 lazily (``preload_max_gb=0``: every item reads its trajectory) and encoding,
2. reading the in-memory preload and encoding,
3. reading the latent cache (memory map, no encode),
plus the one-off cache build time, and then seconds per training epoch of operator+decoder steps
(AdamW, batch 16, encoder frozen) fed from raw HDF5 + encode, preload + encode, and the cache.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from hydra import compose, initialize_config_module
from torch.utils.data import DataLoader

from ups.bench.common import load_average, machine_info, named_tasks
from ups.build import build_model
from ups.config import register_configs
from ups.data import latent_cache as lc
from ups.data.datasets import WindowDataset
from ups.data.latent_dataset import LatentWindowDataset
from ups.data.tasks import TaskData


def load_tasks(data_dir: Path, names: list[str]) -> list[TaskData]:
    """The named tasks' default configs (synthetic files generated when absent), split and normalised."""
    return named_tasks(data_dir, names, names[0] if len(names) == 1 else "pdebench2")


def fresh_model(size: str, tasks: list[TaskData], device: torch.device) -> torch.nn.Module:
    """A freshly initialised ``model=<size>`` LatentSurrogate for the tasks (seeded, so sizes compare)."""
    with initialize_config_module(config_module="ups.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={size}"])
    torch.manual_seed(0)
    return build_model(cfg.model, tasks).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loader(dataset: Any, batch_size: int) -> DataLoader:
    # Shuffled like a training epoch: random access is what the file or the memory map sees.
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))


def timed_pass(batches: Iterable[dict], work: Callable[[dict], None], device: torch.device) -> tuple[float, int]:
    """Seconds and samples for one pass, ``work`` applied to each batch."""
    n = 0
    _sync(device)
    t0 = time.perf_counter()
    for batch in batches:
        work(batch)
        n += len(batch["y"])
    _sync(device)
    return time.perf_counter() - t0, n


def loader_rates(
    model: torch.nn.Module,
    task: TaskData,
    windows: WindowDataset,
    preloaded: WindowDataset,
    cached: LatentWindowDataset,
    device: torch.device,
    batch_size: int,
    repeats: int = 1,
) -> dict[str, float]:
    """Samples/s of one shuffled pass: lazy HDF5 + encode, preload + encode, cache read."""
    coords = torch.from_numpy(task.coords)[None].to(device)

    @torch.no_grad()
    def encode(batch: dict) -> None:
        model.encode(task.name, batch["x"].to(device), coords)

    def read(batch: dict) -> None:
        batch["z"].to(device)

    model.eval()
    encode(next(iter(_loader(preloaded, batch_size))))  # warm-up: allocator, kernels
    out = {}
    for name, ds, work in (
        ("lazy_encode", windows, encode),
        ("preload_encode", preloaded, encode),
        ("cache", cached, read),
    ):
        # Best of `repeats`: on a shared host the minimum is the least disturbed measurement.
        seconds, n = min(timed_pass(_loader(ds, batch_size), work, device) for _ in range(repeats))
        out[f"{name}_samples_per_s"] = n / seconds
    return out


def train_epoch(
    model: torch.nn.Module, task: TaskData, dataset: Any, device: torch.device, batch_size: int, from_cache: bool
) -> float:
    """Seconds for one epoch of operator+decoder AdamW steps, encoder frozen (encoding on the fly unless cached)."""
    model = copy.deepcopy(model).train()
    for group, trainable in ((model.encoder_modules, False), ([model.operator, *model.decoder_modules], True)):
        for module in group:
            module.requires_grad_(trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    coords = torch.from_numpy(task.coords)[None].to(device)

    def step(batch: dict) -> None:
        if from_cache:
            z = batch["z"].to(device)
        else:
            with torch.no_grad():  # frozen encoder: what a stage without a cache does every epoch
                z = model.encode(task.name, batch["x"].to(device), coords)
        pred = model(task.name, None, coords, batch["cond"].to(device), latents=z)
        loss = torch.nn.functional.mse_loss(pred.float(), batch["y"].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed_pass(_loader(dataset, batch_size), step, device)[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate/locate the data, run every measurement, return the results."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    names = args.tasks.split(",")
    with tempfile.TemporaryDirectory(prefix="ups-bench-") as tmp:
        data_dir = Path(args.data_dir or Path(tmp) / "data")
        t0 = time.perf_counter()
        tasks = load_tasks(data_dir, names)
        info = {
            **machine_info(),
            "device": str(device),
            "data_dir": str(data_dir),
            "repeats": args.repeats,
            "data_seconds": round(time.perf_counter() - t0, 2),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        }
        rows = []
        for size in args.models.split(","):
            model = fresh_model(size, tasks, device)
            for task in tasks:
                windows = WindowDataset(task, "train", preload_max_gb=0)
                t0 = time.perf_counter()
                preloaded = WindowDataset(task, "train", preload_max_gb=1e9)
                preload_s = time.perf_counter() - t0
                cache_root = Path(tmp) / "latents"
                key = lc.latent_key(model, task, "train")
                t0 = time.perf_counter()
                path = lc.build_latent_cache(model, windows, cache_root, key, device, batch_size=args.batch_size)
                build_s = time.perf_counter() - t0
                cached = LatentWindowDataset(path, windows, key)
                row = {
                    "model": size,
                    "task": task.name,
                    "windows": len(windows),
                    "points": task.coords.shape[0],
                    "preload_s": preload_s,
                    "build_s": build_s,
                    "cache_mb": sum((path / f).stat().st_size for f in ("z.npy", "frames.npy", "cond.npy")) / 2**20,
                    **loader_rates(model, task, windows, preloaded, cached, device, args.batch_size, args.repeats),
                }
                for name, ds, from_cache in (
                    ("lazy", windows, False),
                    ("preload", preloaded, False),
                    ("cache", cached, True),
                ):
                    row[f"epoch_{name}_s"] = min(
                        train_epoch(model, task, ds, device, args.train_batch, from_cache) for _ in range(args.repeats)
                    )
                row["speedup_vs_lazy"] = row["epoch_lazy_s"] / row["epoch_cache_s"]
                row["speedup_vs_preload"] = row["epoch_preload_s"] / row["epoch_cache_s"]
                rows.append(row)
                lc.prune_cache(cache_root, keep_keys=[])  # caches of one model are not reused by the next
                print(f"  measured {size}/{task.name}", flush=True)
    info["loadavg_after"] = load_average()  # other work on the host skews every number
    return {"info": info, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    """The results as two Markdown tables (loader throughput; epoch times) under a header."""
    i = result["info"]
    head = [
        f"date {i['date']}, torch {i['torch']}, device {i['device']}"
        + (f" ({i['gpu']})" if i["gpu"] else "")
        + f", CPU {i['cpu']}, {i['threads']} torch threads"
        f" ({i['cpu_count']} CPUs), best of {i['repeats']}, load average {i['loadavg_before']} -> "
        f"{i['loadavg_after']}",
        "",
    ]
    loader = [
        "| model | task | windows | points | HDF5 lazy + encode (samples/s) | preload + encode (samples/s) "
        "| cache (samples/s) | preload (s) | cache build (s) | cache size (MB) |",
        "|" + "---|" * 10,
    ]
    epoch = [
        "| model | task | epoch, HDF5 lazy + encode (s) | epoch, preload + encode (s) | epoch, cache (s) "
        "| speed-up vs lazy | speed-up vs preload |",
        "|" + "---|" * 7,
    ]
    for r in result["rows"]:
        loader.append(
            f"| {r['model']} | {r['task']} | {r['windows']} | {r['points']} | "
            f"{r['lazy_encode_samples_per_s']:,.0f} | {r['preload_encode_samples_per_s']:,.0f} | "
            f"{r['cache_samples_per_s']:,.0f} | {r['preload_s']:.2f} | {r['build_s']:.2f} | "
            f"{r['cache_mb']:.1f} |"
        )
        epoch.append(
            f"| {r['model']} | {r['task']} | {r['epoch_lazy_s']:.2f} | {r['epoch_preload_s']:.2f} | "
            f"{r['epoch_cache_s']:.2f} | {r['speedup_vs_lazy']:.1f}x | {r['speedup_vs_preload']:.1f}x |"
        )
    return "\n".join(head + loader + [""] + epoch)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry point: run, print the table, optionally write JSON."""
    p = argparse.ArgumentParser(prog="python -m ups.bench.loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="where the synthetic data lives or is generated (default: a temp dir)")
    p.add_argument("--tasks", default="advection1d,darcy2d")
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--batch-size", type=int, default=64, help="loader / cache-build batch")
    p.add_argument("--train-batch", type=int, default=16, help="batch of the epoch comparison")
    p.add_argument("--repeats", type=int, default=2, help="repeat each measurement, keep the best")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    register_configs()
    result = run(args)
    print(format_table(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    from ups.errors import exit_on_error

    with exit_on_error():
        main()
