"""What only a GPU shows: bf16 + compile training steps, and NCCL ranks. Skipped without CUDA."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ups.runner import run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_bf16_compiled_training_on_one_gpu(tiny_cfg) -> None:
    result = run(tiny_cfg("hardware=gpu", "hardware.compile=true", "trainer.max_steps=6", "trainer.steps_per_epoch=3"))
    assert result["step"] == 6 and all(math.isfinite(v) for v in result["epoch_losses"])
    assert math.isfinite(result["val/nrmse/mean"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize(
    "overrides, says",
    [
        (["parallelism=ddp2"], "joined the nccl process group"),
        (["parallelism=fsdp2_2"], "joined the nccl process group"),
        (
            ["parallelism=fsdp2_2", "parallelism.cpu_offload=true"],
            "FSDP2 CPU offload: sharded parameters, gradients and optimizer state in host memory (pinned)",
        ),
    ],
    ids=["ddp2", "fsdp2_2", "fsdp2_2_offload"],
)
def test_two_nccl_ranks(overrides: list[str], says: str, data_dir: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ups.train",
            *overrides,
            "hardware=gpu",
            "model=tiny",
            "trainer.max_steps=4",
            f"paths.data_dir={data_dir}",
            "data.generate=true",
            f"paths.output_dir={tmp_path / 'run'}",
            "parallelism.timeout_s=120",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert says in proc.stdout + proc.stderr
