"""FLOPs of a training step, two ways, and the device's peak to divide them by.

* :func:`analytic_step_flops`: per-layer formulas (a linear layer ``2·rows·in·out``, attention
  ``4·batch·queries·keys·width``, a convolution ``2·outputs·in/groups·kernel``) applied to the
  shapes one forward pass records, times 3 for forward and backward (the backward of a matmul
  costs two: the gradients of its input and of its weight).
* :func:`counted_step_flops`: ``torch.utils.flop_counter`` on one real step (forward, backward),
  which counts the matmul, attention and convolution kernels the dispatcher runs.

The two agree when every heavy operation of the model is a layer the formulas know; the bench
prints both, and their ratio, so a model whose FLOPs the formulas miss (an FFT, a custom einsum)
is visible instead of silently inflating or deflating MFU.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ups.models.layers import Attention

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by device-name fragment.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def _conv_flops(module: nn.Module, out: torch.Tensor) -> float:
    kernel = math.prod(module.kernel_size)
    return 2.0 * out.numel() * (module.in_channels // module.groups) * kernel


def analytic_forward_flops(model: nn.Module, forward: Callable[[], object]) -> float:
    """Matmul FLOPs of one call of ``forward`` from per-layer formulas on the recorded shapes."""
    total = 0.0

    def linear(module: nn.Linear, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += 2.0 * (out.numel() // module.out_features) * module.in_features * module.out_features

    def attention(module: Attention, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        x, context = args[0], args[1]
        batch = max(x.shape[0], context.shape[0])
        # scores (q k^T) and the weighted sum (p v): 2 FLOPs per multiply-add, each
        total += 4.0 * batch * x.shape[-2] * context.shape[-2] * module.heads * module.head_dim
        if x is context:  # self-attention projects q, k and v in one product, past the Linear hooks
            dim = module.heads * module.head_dim
            total += 2.0 * (x.numel() // x.shape[-1]) * x.shape[-1] * 3 * dim

    def conv(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += _conv_flops(module, out)

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, Attention):
            hooks.append(m.register_forward_hook(attention))
        elif isinstance(
            m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        ):
            hooks.append(m.register_forward_hook(conv))
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in hooks:
            h.remove()
    return total


def analytic_step_flops(model: nn.Module, forward: Callable[[], object]) -> float:
    """A training step's FLOPs: forward + backward = 3 x the forward's matmul FLOPs."""
    return 3.0 * analytic_forward_flops(model, forward)


def counted_step_flops(step: Callable[[], object]) -> float:
    """FLOPs torch's dispatcher counts for one call of ``step`` (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 0, seconds: float = 0.5) -> float:
    """FLOP/s of a square matmul on ``device`` in ``dtype``, measured here, now (the achievable peak
    that MFU is also quoted against; on a CPU the only peak there is)."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up: kernels, allocator
    sync()
    reps, t0 = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if reps % 4 == 0:
            sync()
            if time.perf_counter() - t0 >= seconds:
                break
    return 2.0 * n**3 * reps / (time.perf_counter() - t0)


def datasheet_peak(device: torch.device) -> tuple[float | None, str]:
    """The device's dense bf16 peak from its data sheet, and the name it was looked up by."""
    if device.type != "cuda":
        return None, "CPU (no data-sheet peak; MFU is against the measured fp32 matmul)"
    name = torch.cuda.get_device_name(device)
    for fragment, peak in BF16_PEAK.items():
        if fragment in name:
            return peak, name
    return None, name
