"""What the benchmarks share: where and when a measurement ran, and the tasks it runs on."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module

from ups.data.tasks import TaskData, build_task


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (the platform string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Date, versions, CPU, torch threads and the load average before the measurement: other work
    on the host skews every figure, so each table names it (and the load average after)."""
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg_before": load_average(),
    }


def load_average() -> float:
    """The host's 1-minute load average, rounded for tables."""
    return round(os.getloadavg()[0], 2)


def named_tasks(data_dir: Path, names: list[str], task_group: str) -> list[TaskData]:
    """The named tasks as ``task=<task_group>`` configures them, their files generated into
    ``data_dir`` when absent; an unknown name exits naming the ones the group has."""
    with initialize_config_module(config_module="ups.conf", version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=[f"paths.data_dir={data_dir}", "data.generate=true", f"task={task_group}"]
        )
    unknown = set(names) - set(cfg.task.datasets)
    if unknown:
        raise SystemExit(f"unknown task(s) {sorted(unknown)}; this benchmark knows {sorted(cfg.task.datasets)}")
    return [build_task(n, cfg.task.datasets[n], cfg.data, data_dir, [data_dir]) for n in names]
