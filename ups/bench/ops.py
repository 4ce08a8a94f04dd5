"""Ops launched per training step: a count that does not depend on the device or its load.

Every aten operation that reaches the dispatcher below autograd (forward, backward, optimizer) is
seen by a :class:`~torch.utils._python_dispatch.TorchDispatchMode`; autograd carries the mode into
its backward threads, so the backward's ops are counted on CUDA as on CPU. Views (``view``,
``t``, ``expand``, ``slice``...) only make new tensor metadata and launch nothing: they are counted
apart, so ``launches`` approximates the kernels an eager step asks for. A compiled step fuses many
of them into one kernel; this count is taken eagerly (``torch.compiler.set_stance("force_eager")``)
and so says what the model and the loop ask for, whatever compiles it later.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that launch no kernel whatever the device: metadata, aliasing, or nothing at all.
_NO_KERNEL = {"detach", "alias", "lift_fresh", "_to_copy_noop", "empty", "empty_like", "empty_strided",
              "_local_scalar_dense", "is_same_size", "sym_size", "sym_stride", "sym_numel", "size", "stride",
              "_has_compatible_shallow_copy_type", "set_", "_record_function_enter_new", "_record_function_exit"}


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


def eager() -> contextlib.AbstractContextManager:
    """Run compiled modules eagerly for the count (torch >= 2.6; a no-op context before)."""
    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance else contextlib.nullcontext()


def count_ops(fn: Callable[[], Any]) -> OpCounter:
    """The ops one call of ``fn`` dispatches, compiled modules run eagerly."""
    with eager(), OpCounter() as counter:
        fn()
    return counter


def summary(counter: OpCounter, top: int = 8) -> dict[str, Any]:
    """Totals and the most frequent ops, for JSON and tables."""
    return {"launches": sum(counter.launches.values()), "views": sum(counter.views.values()),
            "top": counter.launches.most_common(top)}
