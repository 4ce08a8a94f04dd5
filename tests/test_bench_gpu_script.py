"""launch/bench_gpu.sh and the GPU section of docs/benchmarks.md describe the same run, and the
batch axis reports MFU (issue 22 item 4) from each point's own FLOPs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from ups.bench import report
from ups.bench.run import _mfu

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = (ROOT / "launch" / "bench_gpu.sh").read_text()


def _parts() -> dict[str, int]:
    return {name: int(limit) for name, limit in re.findall(r"^part (\w+) (\d+) ", SCRIPT, re.M)}


def test_the_parts_fit_eight_minutes_and_the_docs_name_each_with_its_limit() -> None:
    parts = _parts()
    assert list(parts) == ["pytest_gpu", "variants", "tune", "batch_axis", "pdebench11", "profile"]
    assert sum(parts.values()) <= 480
    gpu = (ROOT / "docs" / "benchmarks.md").read_text().split("## GPU")[1].split("\n## ")[0]
    rows = {m[0]: int(m[1]) for m in re.findall(r"^\| \d \| `(\w+)` \|.*\| (\d+) s \|", gpu, re.M)}
    assert rows == parts
    for name, limit in parts.items():  # the header's list too
        assert re.search(rf"#\s+\d\. {name}\b.*limit\s+{limit} s", SCRIPT), name
    assert f"add up to {sum(parts.values())} s" in gpu
    variants = re.search(r"VARIANTS:-(\[[^]]*\])", SCRIPT)[1]
    assert f"bench.variants={variants}" in gpu


def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "launch" / "bench_gpu.sh")], check=True)


def test_the_batch_axis_has_mfu_columns(tmp_path: Path) -> None:
    peaks = {"measured_fp32": 1e12, "measured_bf16": 4e12, "datasheet_bf16": 1e15}
    row = {
        "value": "64",
        "status": "ok",
        "samples_per_s": 100.0,
        "step_ms": 10.0,
        "peak_memory_mb": 5.0,
        "real_s": 2.0,
        "work": {"analytic": 4e12},
        "precision": "bf16",
    }
    _mfu(row, peaks)
    assert row["mfu_measured"] == 0.5 and row["mfu_datasheet_bf16"] == 0.002
    info = {
        "device": "cuda:0",
        "gpu": "H200",
        "date": "d",
        "torch": "t",
        "loadavg_before": 0,
        "command": "c",
        "model": "m",
        "task": "t",
        "batch_size": 64,
        "axis": "batch",
    }
    text = report.axis_markdown({"info": info, "axis": "batch", "rows": [row]}, tmp_path)
    assert "| 64 | 100.0 | 10.0 | 5 | 50.0% | 0.2% | ok |" in text
