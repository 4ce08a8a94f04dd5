"""Multi-task, data-parallel batch sampler (see docs/sampler.md).

One global stream of ``(task_index, sample_index)`` pairs is built from ``(seed, epoch)``
and cut into global batches of ``G = batch_size * num_replicas`` samples; rank ``r`` takes
the slice ``[r * batch_size, (r + 1) * batch_size)`` of every global batch.  The stream
depends on ``G`` but not on how ``G`` is split into ranks, so e.g. 2 ranks x 8 and
1 rank x 16 see exactly the same samples at every step.

Rank and world size are plain arguments: this module never touches torch.distributed.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

STRATEGIES = ("proportional", "balanced", "temperature")
MODES = ("task", "mixed")
# Stream ids mixed into every seed, so task draws and per-task permutations come from
# independent random streams (changing one never shifts the other).
_DRAWS, _PERMS = 0, 1
_STATE_VERSION = 1


def _int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, else a ValueError naming ``name``."""
    if isinstance(value, bool):  # bool is an int subclass; True as a size is a bug
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)  # accepts numpy ints, rejects floats like 8.0
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


class _TaskStream:
    """Endless index stream of one task for one epoch: permutation after permutation.

    Cycle ``k`` is a fresh permutation seeded by ``(seed, epoch, task, k)``, so no index
    repeats before the task has been exhausted.  When one ``take`` (one global batch)
    runs past the end of a cycle, the next permutation is stably reordered to visit
    the indices this batch already holds last: ranks then get disjoint samples whenever
    the batch asks for at most ``n`` samples of the task, and never more than one extra
    copy of any index otherwise.
    """

    def __init__(self, n: int, key: tuple[int, ...]):
        self.n, self.key = n, key
        self.cycle, self.pos, self.perm = -1, n, np.empty(0, dtype=np.int64)  # lazy

    def take(self, count: int) -> np.ndarray:
        parts: list[np.ndarray] = []
        got = 0
        while got < count:
            if self.pos == self.n:  # cycle exhausted: reshuffle deterministically
                self.cycle += 1
                rng = np.random.default_rng([*self.key, self.cycle])
                perm = rng.permutation(self.n)
                if parts:  # wrapped inside this batch: least-used indices first
                    used = np.bincount(np.concatenate(parts), minlength=self.n)
                    perm = perm[np.argsort(used[perm], kind="stable")]
                self.perm, self.pos = perm, 0
            k = min(count - got, self.n - self.pos)
            parts.append(self.perm[self.pos : self.pos + k])
            self.pos += k
            got += k
        return np.concatenate(parts)


class MultiTaskDistributedSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's micro-batches, lists of ``(task_index, sample_index)``.

    Args:
        task_sizes: number of samples of each task (all >= 1).
        batch_size: per-rank micro-batch size ``b``; the global batch is ``b * num_replicas``.
        num_replicas, rank: data-parallel world size and this process's rank.
        strategy: task probabilities ``p_t``: "proportional" (``n_t``), "balanced" (1)
            or "temperature" (``n_t ** (1 / temperature)``), normalised.
        temperature: ``T > 0`` for strategy "temperature" (1 = proportional, inf = balanced).
        weights: a factor (> 0) per task on the strategy's probability before normalising
            (default all 1), e.g. to draw a family that trails twice as often.
        mode: "task" (every global batch holds one task, the same on all ranks) or
            "mixed" (each sample's task drawn independently).
        seed: base seed (>= 0) shared by all ranks.
        steps_per_epoch: global batches per epoch; default ``max(1, sum(task_sizes) // G)``.
    """

    def __init__(
        self,
        task_sizes: Sequence[int],
        batch_size: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        strategy: str = "balanced",
        temperature: float = 2.0,
        weights: Sequence[float] | None = None,
        mode: str = "task",
        seed: int = 0,
        steps_per_epoch: int | None = None,
    ):
        super().__init__()
        sizes = list(task_sizes)
        if not sizes:
            raise ValueError("task_sizes is empty: the sampler needs at least one task")
        self.task_sizes = [_int(f"task_sizes[{t}] (size of task {t})", n, 1) for t, n in enumerate(sizes)]
        self.batch_size = _int("batch_size", batch_size, 1)
        self.num_replicas = _int("num_replicas", num_replicas, 1)
        self.rank = _int("rank", rank, 0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={self.num_replicas}), got {self.rank}")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        temperature = float(temperature)
        if not temperature > 0:  # also rejects NaN
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.strategy, self.mode, self.temperature = strategy, mode, temperature
        self.weights = [1.0] * len(sizes) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(sizes) or not all(math.isfinite(w) and w > 0 for w in self.weights):
            raise ValueError(f"weights must be {len(sizes)} finite numbers > 0 (one per task), got {weights}")
        self.seed = _int("seed", seed, 0)
        self.steps_per_epoch = None if steps_per_epoch is None else _int("steps_per_epoch", steps_per_epoch, 1)
        self.global_batch_size = self.batch_size * self.num_replicas
        self._epoch = 0
        self._start = 0  # global batches to skip on the next __iter__ (resume)
        self._batches_done = 0  # global batches of the current epoch handed out so far

    # ------------------------------------------------------------------ sampling
    def task_probabilities(self) -> list[float]:
        """Probability of drawing each task (per global batch in mode "task", per sample in "mixed")."""
        n = np.asarray(self.task_sizes, dtype=np.float64)
        if self.strategy == "proportional":
            w = n
        elif self.strategy == "balanced":
            w = np.ones_like(n)
        else:  # scale by the largest size first so huge tasks cannot overflow the power
            w = (n / n.max()) ** (1.0 / self.temperature)
        w = w * np.asarray(self.weights)
        return (w / w.sum()).tolist()

    def __len__(self) -> int:
        """Micro-batches this rank yields in a full epoch (the same on every rank).

        This is the full epoch length even right after a mid-epoch ``load_state_dict``;
        the resumed pass yields ``len(self) - state["batches_done"]`` micro-batches.
        """
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        # drop_last semantics: only whole global batches, so collectives never mismatch
        return max(1, sum(self.task_sizes) // self.global_batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        """Yield this rank's micro-batches for the current epoch, from the resume point if any."""
        start, self._start = self._start, 0  # a resume offset applies to one pass only
        epoch, steps, g = self._epoch, len(self), self.global_batch_size
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        self._batches_done = min(start, steps)
        draws = np.random.default_rng([self.seed, epoch, _DRAWS])
        streams = [_TaskStream(n, (self.seed, epoch, _PERMS, t)) for t, n in enumerate(self.task_sizes)]
        cdf = np.cumsum(self.task_probabilities())
        cdf[-1] = 1.0  # guard against round-off: every uniform in [0, 1) maps to a task
        for step in range(steps):
            # Skipped (already consumed) steps are still generated: the per-task streams
            # must advance exactly as in the uninterrupted run.
            if self.mode == "task":
                task = int(np.searchsorted(cdf, draws.random(), side="right"))
                idx = streams[task].take(g)
                if step >= start:
                    batch = [(task, i) for i in idx[lo:hi].tolist()]
            else:
                tasks = np.searchsorted(cdf, draws.random(g), side="right")
                idx = np.empty(g, dtype=np.int64)
                for t in np.unique(tasks).tolist():
                    where = tasks == t
                    idx[where] = streams[t].take(int(where.sum()))
                if step >= start:
                    batch = list(zip(tasks[lo:hi].tolist(), idx[lo:hi].tolist()))
            if step >= start:
                self._batches_done = step + 1  # counted before yielding: handed out = consumed
                yield batch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` produces (call with the same value on all ranks).

        Changing the epoch drops any pending resume position; calling it with the epoch
        just restored by ``load_state_dict`` keeps it, so the usual
        ``for epoch in range(start_epoch, ...): sampler.set_epoch(epoch)`` loop resumes correctly.
        """
        epoch = _int("epoch", epoch, 0)
        if epoch != self._epoch:
            self._epoch, self._start, self._batches_done = epoch, 0, 0

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self, *, batches_done: int | None = None) -> dict:
        """Plain-Python (JSON-safe) resume state.

        ``batches_done`` counts global batches of the current epoch handed out by
        ``__iter__``.  A DataLoader with workers pulls batches ahead of the training
        step; pass the training loop's own step count as ``batches_done`` to override.
        """
        done = self._batches_done if batches_done is None else _int("batches_done", batches_done, 0)
        return {
            "version": _STATE_VERSION,
            "epoch": self._epoch,
            "seed": self.seed,
            "batches_done": done,
            "global_batch_size": self.global_batch_size,
            "samples_consumed": done * self.global_batch_size,
            "epoch_length": len(self),
            "batch_size": self.batch_size,
            "num_replicas": self.num_replicas,
            "task_sizes": list(self.task_sizes),
            "strategy": self.strategy,
            "temperature": self.temperature,
            "weights": list(self.weights),
            "mode": self.mode,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore epoch, seed and position; the next ``__iter__`` continues at the next global batch.

        The global batch size may differ from the checkpoint's only at an epoch boundary
        (nothing or everything of the epoch consumed); mid-epoch it raises ValueError,
        because the epoch's stream depends on it.  Splitting the same global batch over a
        different number of ranks is always fine.
        """
        mine = self.state_dict()
        state = {"weights": [1.0] * len(self.task_sizes), **state}  # checkpoints from before weights
        keys = ["task_sizes", "weights", "strategy", "mode"] + (
            ["temperature"] if self.strategy == "temperature" else []
        )
        for key in keys:
            theirs = list(state[key]) if key in ("task_sizes", "weights") else state[key]
            if theirs != mine[key]:
                raise ValueError(
                    f"checkpointed sampler has {key}={state[key]!r} but this one has "
                    f"{key}={mine[key]!r}; resuming would change the data order"
                )
        old_g = _int("state['global_batch_size']", state["global_batch_size"], 1)
        done = _int("state['batches_done']", state["batches_done"], 0)
        old_len = _int("state['epoch_length']", state.get("epoch_length", done + 1), 1)
        if old_g == self.global_batch_size:
            start = done
        elif done == 0:
            start = 0  # epoch not started: regenerate it for the new global batch size
        elif done >= old_len:
            start = len(self)  # epoch finished: nothing left until the next set_epoch
        else:
            if old_g % self.num_replicas == 0:
                hint = f"batch_size={old_g // self.num_replicas} with num_replicas={self.num_replicas}"
            else:
                hint = f"a num_replicas that divides {old_g}"
            raise ValueError(
                f"cannot resume epoch {state['epoch']} mid-way ({done}/{old_len} global batches "
                f"done) with a different global batch size: the checkpoint used {old_g} "
                f"(batch_size={state.get('batch_size')} x num_replicas={state.get('num_replicas')}), "
                f"this sampler uses {self.global_batch_size} (batch_size={self.batch_size} x "
                f"num_replicas={self.num_replicas}). An epoch's sample stream depends on the global "
                f"batch size, so continuing would silently change the data order. Keep the global "
                f"batch size at {old_g} ({hint}) or resume from a checkpoint taken at an epoch boundary."
            )
        self.seed = _int("state['seed']", state["seed"], 0)
        self._epoch = _int("state['epoch']", state["epoch"], 0)
        self._start = self._batches_done = start
