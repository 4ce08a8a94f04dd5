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
