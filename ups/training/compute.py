"""How a forward pass computes: bf16 autocast and the scaled-dot-product-attention backend.

One factory for the trainer, the evaluation and the benchmark, so a switch measured by
``python -m ups.bench`` is the switch a run uses.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

SDPA_BACKENDS = ("auto", "flash", "efficient", "math", "cudnn")


def compute_context(hw: Any, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the context to run forward passes in, from ``hardware.precision`` and
    ``hardware.sdpa_backend`` (``auto``: torch picks the fastest kernel that supports the inputs)."""
    bf16 = hw.precision == "bf16"
    backend = getattr(hw, "sdpa_backend", "auto")
    kernel = None
    if backend != "auto":
        from torch.nn.attention import SDPBackend

        kernel = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                  "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]

    def context() -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16))
        if kernel is not None:
            from torch.nn.attention import sdpa_kernel

            stack.enter_context(sdpa_kernel(kernel))
        return stack

    return context


def cpu_threads(cpu_count: int, load_average: float, local_ranks: int) -> int:
    """Torch threads per CPU rank when ``hardware.threads`` is null: the cores the other work on the
    machine leaves free (its 1-minute load average), shared among this node's ranks, at least one.

    Measured on a 2-core machine (docs/benchmarks.md#cpu-threads): 100 steps of the default run took
    9.6 s with 1 thread and 52.5 s with torch's default of 2 while other work ran (threads that wait
    for a busy core spin), and 7.4 s with 2 against 9.8 s with 1 when the machine was quiet.
    """
    free = cpu_count - int(load_average + 0.5)
    return max(1, free // max(1, local_ranks))
