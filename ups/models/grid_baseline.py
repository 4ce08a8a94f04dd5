"""What the single-task grid baselines (FNO, U-Net) share: task lookup and the checks of one call."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ups.models.spec import TaskIO, as_task_io, module_keys


class GridBaseline(nn.Module):
    """Shared input handling of the single-task grid baselines: task lookup and shape checks."""

    def __init__(self, tasks: Mapping[str, TaskIO | Mapping]):
        super().__init__()
        self.tasks: dict[str, TaskIO] = {str(name): as_task_io(spec) for name, spec in tasks.items()}
        if not self.tasks:
            raise ValueError(f"{type(self).__name__} needs at least one task")
        self._keys = module_keys(list(self.tasks))

    def prepare(self, task: str, x: Tensor, grid, latents) -> tuple[str, TaskIO, tuple[int, ...]]:
        """Validate one call; return the task's ModuleDict key, its TaskIO and the grid to use."""
        name = type(self).__name__
        if latents is not None:
            raise ValueError(f"{name} has no encoder whose latents could be cached; pass latents=None")
        if task not in self.tasks:
            raise ValueError(f"{name}: unknown task {task!r}; known tasks: {sorted(self.tasks)}")
        io = self.tasks[task]
        grid = tuple(int(g) for g in grid) if grid is not None else io.grid
        if not grid:
            raise ValueError(f"{name} needs the grid of task {task!r}: its TaskIO has none, pass grid=")
        if len(grid) != io.dim:
            raise ValueError(f"task {task!r}: grid {grid} does not have dim={io.dim} axes")
        if x.dim() != 3 or x.shape[-1] != io.in_channels:
            raise ValueError(f"task {task!r}: x must be (B, P, {io.in_channels}), got {tuple(x.shape)}")
        points = 1
        for n in grid:
            points *= n
        if x.shape[1] != points:
            raise ValueError(f"task {task!r}: {x.shape[1]} points do not fill the grid {grid} ({points} points)")
        return self._keys[task], io, grid
