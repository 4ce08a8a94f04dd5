"""How a forward pass computes: TF32 for fp32 matrix products, bf16 autocast and the
scaled-dot-product-attention backend; and whether ``torch.compile`` did compile.

One factory for the trainer, the evaluation and the benchmark, so a switch measured by
``python -m ups.bench`` is the switch a run uses.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

import torch

from ups.errors import ConfigError

log = logging.getLogger(__name__)
SDPA_BACKENDS = ("auto", "flash", "efficient", "math", "cudnn")


def apply_tf32(enabled: bool, device: torch.device) -> None:
    """TF32 tensor cores for fp32 matrix products and convolutions on CUDA (``hardware.tf32``).

    fp32 matmuls on Ampere and later otherwise run at a fraction of the tensor cores' rate (inductor
    warns about it). Process-wide flags, so only set for a CUDA device: a CPU run keeps torch's
    defaults. ``set_float32_matmul_precision`` sets the new and the legacy flags together (mixing the
    two APIs by hand makes torch >= 2.9 raise when the legacy one is read)."""
    if device.type != "cuda":
        return
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "tf32" if enabled else "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = enabled


def tf32_enabled() -> bool:
    """Whether fp32 matmuls may use TF32 (read through the same API that :func:`apply_tf32` sets)."""
    return torch.get_float32_matmul_precision() != "highest"


def check_precision(hw: Any, device: torch.device) -> None:
    """Refuse, with the fix named, a kernel choice this device cannot run at this precision."""
    backend = getattr(hw, "sdpa_backend", "auto")
    if device.type == "cuda" and backend == "flash" and hw.precision != "bf16":
        # torch would fail at the first attention call with "No available kernel"
        raise ConfigError(
            "hardware.sdpa_backend=flash needs bf16 or fp16 inputs on CUDA, and "
            f"hardware.precision={hw.precision}: set hardware.precision=bf16 (autocast makes the "
            "attention inputs bf16) or choose sdpa_backend=efficient/auto"
        )


def compute_context(hw: Any, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the context to run forward passes in, from ``hardware.precision``,
    ``hardware.sdpa_backend`` (``auto``: torch picks the fastest kernel that supports the inputs) and
    ``hardware.tf32`` (applied here, once per factory: every path that computes builds one)."""
    check_precision(hw, device)
    apply_tf32(bool(getattr(hw, "tf32", True)), device)
    bf16 = hw.precision == "bf16"
    backend = getattr(hw, "sdpa_backend", "auto")
    kernel = None
    if backend != "auto":
        from torch.nn.attention import SDPBackend

        kernel = {
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
        }[backend]

    def context() -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        # bf16 autocast: parameters stay fp32 (the master weights), matmuls and attention run in bf16,
        # so the flash kernel, which takes only bf16/fp16, composes with it.
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16))
        if kernel is not None:
            from torch.nn.attention import sdpa_kernel

            stack.enter_context(sdpa_kernel(kernel))
        return stack

    return context


def compile_counts() -> dict[str, int]:
    """Dynamo's process-wide counts so far: frames compiled, frames that failed (and so run eagerly
    because ``suppress_errors`` is on), graph breaks. Take one before and one after a step."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - torch without dynamo
        return {"frames_ok": 0, "frames_total": 0, "graph_breaks": 0}
    return {
        "frames_ok": int(counters["frames"]["ok"]),
        "frames_total": int(counters["frames"]["total"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def compile_report(before: dict[str, int], after: dict[str, int], reused: bool = False) -> dict[str, Any]:
    """What compilation did between two :func:`compile_counts`, with a message that says plainly when
    it fell back to eager: a failed block runs eagerly (dynamo's ``suppress_errors``), which would
    otherwise show only as a step no faster than eager. ``reused``: graphs compiled earlier in the
    process may serve this model (same code, same guards), so no new frame is not a failure then."""
    d = {k: after[k] - before[k] for k in after}
    failed = d["frames_total"] - d["frames_ok"]
    out = {"compiled_frames": d["frames_ok"], "failed_frames": failed, "graph_breaks": d["graph_breaks"]}
    if failed:
        out["message"] = (
            f"torch.compile failed on {failed} of {d['frames_total']} frames, which run eagerly "
            "(see dynamo's warning above); the step is only partly compiled"
        )
    elif d["frames_total"] == 0:
        out["message"] = "torch.compile compiled nothing new in this step" + (
            ": the graphs compiled earlier in this process served it"
            if reused
            else ": the step ran eagerly (compile disabled, or no block was wrapped)"
        )
    if "message" in out:
        log.warning(out["message"])
    return out


def cpu_threads(cpu_count: int, load_average: float, local_ranks: int) -> int:
    """Torch threads per CPU rank when ``hardware.threads`` is null: the cores the other work on the
    machine leaves free (its 1-minute load average), shared among this node's ranks, at least one.

    Measured on a 2-core machine (docs/benchmarks.md#cpu-threads): 100 steps of the default run took
    9.6 s with 1 thread and 52.5 s with torch's default of 2 while other work ran (threads that wait
    for a busy core spin), and 7.4 s with 2 against 9.8 s with 1 when the machine was quiet.
    """
    free = cpu_count - int(load_average + 0.5)
    return max(1, free // max(1, local_ranks))
