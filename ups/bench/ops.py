"""Ops launched per training step: a count that does not depend on the device or its load.

Every aten operation that reaches the dispatcher below autograd (forward, backward, optimizer) is
seen by a :class:`~torch.utils._python_dispatch.TorchDispatchMode`; autograd carries the mode into
its backward threads, so the backward's ops are counted on CUDA as on CPU. Views (``view``,
``t``, ``expand``, ``slice``...) only make new tensor metadata and launch nothing: they are counted
apart, so ``launches`` approximates the kernels an eager step asks for.

A compiled step fuses many of them into one kernel. :func:`count_ops` counts either what the model
and the loop ask for (``compiled=False``: compiled modules run eagerly,
``torch.compiler.set_stance("force_eager")``) or what the step launches as it runs
(``compiled=True``): the ops that still run eagerly and the extern calls inside compiled graphs
(matmuls, attention, FFTs: aten ops the graph's wrapper dispatches, seen by the same mode), plus
every kernel inductor generated, counted as it runs from the profiler's records (a C++ kernel
records its name when ``torch._inductor.config.cpp.enable_kernel_profile`` was on at compile time:
:func:`record_compiled_kernels`). Nothing is inferred from the generated code: a kernel that does
not run is not counted.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that launch no kernel whatever the device: metadata, aliasing, or nothing at all.
_NO_KERNEL = {
    "detach",
    "alias",
    "lift_fresh",
    "_to_copy_noop",
    "empty",
    "empty_like",
    "empty_strided",
    "_local_scalar_dense",
    "is_same_size",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "size",
    "stride",
    "_has_compatible_shallow_copy_type",
    "set_",
    "_record_function_enter_new",
    "_record_function_exit",
    "promote_types",
    "result_type",
    "can_cast",
}  # dtype arithmetic


def _is_view(func: Any) -> bool:
    name = func._schema.name.split("::")[-1]
    return bool(getattr(func, "is_view", False)) or name in _NO_KERNEL


class OpCounter(TorchDispatchMode):
    """Counts aten ops by name while active: ``launches`` (ops that run a kernel) and ``views``."""

    def __init__(self) -> None:
        super().__init__()
        self.launches: Counter[str] = Counter()
        self.views: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = str(func.overloadpacket.__name__)
        (self.views if _is_view(func) else self.launches)[name] += 1
        return func(*args, **(kwargs or {}))


# Profiler records of kernels inductor generated: C++ kernels are named ``graph_<i>_cpp_fused_...``.
_GENERATED = ("cpp_fused", "triton_")


def record_compiled_kernels() -> None:
    """Make the C++ kernels inductor generates from now on record their launches (``RECORD_FUNCTION``,
    a no-op while no profiler listens), so that :func:`count_ops` can count them. Call it before the
    first compiled step: it changes the generated code, not code already compiled."""
    try:
        import torch._inductor.config as inductor_config
    except ImportError:  # pragma: no cover - torch without inductor
        return
    inductor_config.cpp.enable_kernel_profile = True


class RunningOpCounter(OpCounter):
    """An :class:`OpCounter` under which compiled code runs compiled: dynamo runs a frame eagerly while
    a dispatch mode is active, unless the mode ignores compile internals (then it is off while
    compiling and on while the compiled artifact runs, and sees the aten ops the artifact dispatches)."""

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True


def eager() -> contextlib.AbstractContextManager:
    """Run compiled modules eagerly for the count (torch >= 2.6; a no-op context before)."""
    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance else contextlib.nullcontext()


def count_ops(fn: Callable[[], Any], compiled: bool = False) -> OpCounter:
    """The ops one call of ``fn`` dispatches. ``compiled=False``: compiled modules run eagerly (what
    the step asks for); ``True``: as it runs, each kernel inductor generated counted once per launch
    under ``inductor:<name>`` (see the module's docstring)."""
    if not compiled:
        with eager(), OpCounter() as counter:
            fn()
        return counter
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof, RunningOpCounter() as counter:
        fn()
    graphs = 0
    for event in prof.events():
        if any(tag in event.name for tag in _GENERATED):
            counter.launches["inductor:" + event.name.split("cpp_fused_")[-1][:60]] += 1
        graphs += event.name.startswith("## Call CompiledFxGraph")
    if graphs and not any(k.startswith("inductor:") for k in counter.launches):
        # graphs ran but none of their kernels recorded itself: compiled before record_compiled_kernels()
        # (or by a backend that records nothing); a count without them would flatter the step
        raise RuntimeError(
            f"{graphs} compiled graphs ran but no generated kernel was recorded: call "
            "ups.bench.ops.record_compiled_kernels() before the first compiled step"
        )
    return counter


def summary(counter: OpCounter, top: int = 8) -> dict[str, Any]:
    """Totals and the most frequent ops, for JSON and tables."""
    return {
        "launches": sum(counter.launches.values()),
        "views": sum(counter.views.values()),
        "top": counter.launches.most_common(top),
    }
