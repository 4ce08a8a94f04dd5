"""Settings a model takes per task name (``model.by_task``): its own frames per call, fewer context frames,
its own cell size."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from ups.models.spec import TaskIO

log = logging.getLogger(__name__)


def task_settings(
    by_task: Mapping[str, Mapping[str, int]],
    tasks: Mapping[str, TaskIO],
    bundle: Sequence[int] = (1, 1, 1),
    allowed: tuple[str, ...] = ("bundle", "context", "patch"),
    patch: Sequence[int] = (1, 1, 1),
) -> tuple[dict[str, int], dict[str, int], dict[str, list[int]]]:
    """Frames per call, input channels read and grid points per cell (by dimension), per task: its
    dimension's ``bundle`` (one for a steady task), every context frame and ``patch``, unless
    ``by_task`` names the task with ``bundle``, ``context`` (the last frames of its ``initial_step``)
    or ``patch``, each >= 1 and of those ``allowed``, a context no longer than the task's. Names of
    tasks the run does not have are left out with a warning (a recipe may name more tasks than a run
    trains)."""
    for name, settings in by_task.items():
        unknown = sorted(set(settings) - set(allowed))
        if unknown:
            raise ValueError(f"by_task.{name}: unknown setting(s) {unknown}; known: {list(allowed)}")
        if min((int(v) for v in settings.values()), default=1) < 1:
            raise ValueError(f"by_task.{name}: settings must be >= 1, got {dict(settings)}")
        if name not in tasks:
            log.warning("model.by_task names %r, which this run does not train; ignored", name)
            continue
        io, context = tasks[name], settings.get("context")
        available = io.in_channels // io.out_channels  # the task's initial_step
        if context is not None and (io.steady or int(context) > available):
            given = "no context frames (steady)" if io.steady else f"{available} context frame(s)"
            raise ValueError(f"by_task.{name}.context={context}: the task gives {given}")
    frames, channels = {}, {}
    for name, io in tasks.items():
        settings = by_task.get(name, {})
        frames[name] = 1 if io.steady else int(settings.get("bundle", bundle[io.dim - 1]))
        channels[name] = int(settings["context"]) * io.out_channels if "context" in settings else io.in_channels
    return frames, channels, {name: task_patch(by_task, name, io.dim, patch) for name, io in tasks.items()}


def task_patch(by_task: Mapping[str, Mapping[str, int]], name: str, dim: int, patch: Sequence[int]) -> list[int]:
    """``patch`` (grid points per cell, by dimension) with the entry of a ``dim``-dimensional task
    replaced by its ``by_task`` ``patch``, if it has one."""
    out = [int(p) for p in patch]
    if "patch" in by_task.get(name, {}):
        out[dim - 1] = int(by_task[name]["patch"])
    return out
