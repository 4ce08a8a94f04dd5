"""Gates: after each stage, a small evaluation decides whether the pipeline goes on.

``eval.small`` validation trajectories per task (the first ones of the split: the same subset every
time) are rolled out by the model, persistence and the training-mean field. Each gate of ``gates``
(``conf/gates/``; ``gates=none`` turns them off) checks those numbers::

    gates:
      trivial:  {kind: beats_trivial, margin: 0.0}       # below both trivial predictors on every task
      previous: {kind: no_worse_than_previous, tolerance: 0.1}   # no task >10 % worse than the last stage
      budget:   {kind: below, value: 0.5, task: mean}     # nRMSE of a task (or the mean) below a value
      entry:    {kind: beats_run, run: outputs/x/y, margin: 0.05}   # 5 % below that run's test nRMSE per task

A failed gate stops the run before the next stage and before the closing evaluation, writes
``eval/gates.json`` (every number, which gate failed and why) and exits with :data:`GATE_EXIT`. The
leaderboard lists the run as gated out. A rerun stops at the same gate (the file says so) until the
gates change or ``gates=none``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ups.training.callbacks import Callback
from ups.training.failures import StopTraining

if TYPE_CHECKING:
    from ups.training.trainer import Trainer

log = logging.getLogger(__name__)

GATE_EXIT = 4  # the exit status of a run stopped by a gate (1: an error, 3: a launched rank's error)
FILE = "eval/gates.json"


class GateFailed(StopTraining):
    """A gate failed after a stage: the pipeline stops there (exit status :data:`GATE_EXIT`)."""

    exit_code = GATE_EXIT


def _tasks(scores: dict) -> list[str]:
    return [k.split("/", 1)[1] for k in scores["model"] if k.startswith("nrmse/") and k != "nrmse/mean"]


def _defined(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def beats_trivial(scores: dict, previous: dict | None, margin: float = 0.0) -> list[str]:
    """Each task's nRMSE below (1 - margin) x persistence and x the training-mean field, where defined."""
    out = []
    for t in _tasks(scores):
        m = scores["model"][f"nrmse/{t}"]
        for p in ("persistence", "mean_field"):
            ref = scores[p].get(f"nrmse/{t}")
            if _defined(ref) and not (_defined(m) and m < (1 - margin) * ref):
                out.append(f"{t} {m:.4g} not below {p} {ref:.4g}" + (f" by {margin:g}" if margin else ""))
    return out


def no_worse_than_previous(scores: dict, previous: dict | None, tolerance: float = 0.0) -> list[str]:
    """No task's nRMSE above (1 + tolerance) x the previous stage's (the first stage passes)."""
    if previous is None:
        return []
    out = []
    for t in _tasks(scores):
        m, before = scores["model"][f"nrmse/{t}"], previous["model"].get(f"nrmse/{t}")
        if _defined(before) and not (_defined(m) and m <= (1 + tolerance) * before):
            out.append(f"{t} {m:.4g} worse than the previous stage's {before:.4g}")
    return out


def below(scores: dict, previous: dict | None, value: float, task: str = "mean") -> list[str]:
    """The nRMSE of ``task`` (``mean``: over tasks) below ``value``."""
    m = scores["model"].get(f"nrmse/{task}")
    return [] if _defined(m) and m < value else [f"{task} {m:.4g} not below {value:g}"]


def beats_run(scores: dict, previous: dict | None, run: str, margin: float = 0.0) -> list[str]:
    """Each task's nRMSE below (1 - margin) x the test nRMSE of another run (a leaderboard entry or a
    baseline: its ``eval/final_test.json``). That run's numbers are on the full test split, these on
    the small validation subset: a margin allows for the difference."""
    path = Path(run) / "eval" / "final_test.json"
    try:
        ref = json.loads(path.read_text())["results"]["model"]
    except (OSError, ValueError, KeyError) as err:
        return [f"the reference {path} cannot be read ({err})"]
    out = []
    for t in _tasks(scores):
        m, r = scores["model"][f"nrmse/{t}"], ref.get(f"nrmse/{t}")
        if _defined(r) and not (_defined(m) and m < (1 - margin) * r):
            out.append(f"{t} {m:.4g} not below {run}'s {r:.4g}" + (f" by {margin:g}" if margin else ""))
    return out


KINDS: dict[str, Callable[..., list[str]]] = {
    f.__name__: f for f in (beats_trivial, no_worse_than_previous, below, beats_run)
}


def active(gates: Any) -> list[tuple[str, Any]]:
    """(name, spec) of the gates in force: one set to null (``gates.previous=null``) is dropped."""
    return [(name, spec) for name, spec in (gates or {}).items() if spec is not None]


def check_gates(gates: Any) -> None:
    """Refuse an unknown kind or a misspelt argument before training (ConfigError naming the gate)."""
    import inspect

    from ups.config import ConfigError

    for name, spec in active(gates):
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind not in KINDS:
            raise ConfigError(f"gates.{name}.kind={kind!r} is not one of {', '.join(KINDS)}")
        try:
            inspect.signature(KINDS[kind]).bind({}, None, **spec)
        except TypeError as err:
            raise ConfigError(f"gates.{name} ({kind}): {err}") from None


def judge(gates: Any, scores: dict, previous: dict | None) -> list[str]:
    """``"<gate>: <why>"`` for every failed check; [] when all pass."""
    failed = []
    for name, spec in active(gates):
        spec = dict(spec)
        failed += [f"{name}: {why}" for why in KINDS[spec.pop("kind")](scores, previous, **spec)]
    return failed


def build_gates(cfg: Any) -> "Gates | None":
    """The gates callback of a run, its gates checked; None with ``gates=none``."""
    if not active(cfg.get("gates")):
        return None
    check_gates(cfg.gates)
    return Gates(cfg.gates, cfg.eval.small)


class Gates(Callback):
    """After each stage's final checkpoint: the small evaluation, then the gates (on every rank: the
    evaluation is collective, so every rank reaches the same verdict)."""

    def __init__(self, gates: Any, samples: int):
        self.gates, self.samples, self.sets, self.mean_field = gates, samples, None, None
        self.record: dict = {"passed": True, "stages": {}, "failed": []}

    def on_run_start(self, trainer: "Trainer") -> None:
        from ups.data.datasets import TrajectoryDataset
        from ups.evaluation.baselines import MeanField

        pre = trainer.cfg.data.preload_max_gb
        self.sets = [TrajectoryDataset(t, "val", self.samples, pre) for t in trainer.tasks]
        self.mean_field = MeanField(trainer.tasks, pre)
        path = Path(trainer.run_dir) / FILE
        if path.exists():  # a rerun: earlier stages' numbers, and whether a gate stopped the run
            self.record = json.loads(path.read_text())

    def on_fit_start(self, trainer: "Trainer") -> None:
        """A rerun of a gated-out run: judge the stored numbers of the stage that failed with today's gates
        (its final checkpoint exists, so it is not evaluated again); still failing, stop before going on."""
        failed_at, stages = self.record.get("stage"), self.record.get("stages", {})
        if self.record.get("passed", True) or failed_at not in stages:
            return
        names = list(stages)
        previous = stages[names[names.index(failed_at) - 1]] if names.index(failed_at) else None
        failed = judge(self.gates, stages[failed_at], previous)
        if failed:
            raise GateFailed(
                f"gates stopped this run after stage {failed_at}: {'; '.join(failed)}; numbers in "
                f"{Path(trainer.run_dir) / FILE}. Change the gates, or rerun with gates=none"
            )
        self.record.update(passed=True, failed=[])

    def on_fit_end(self, trainer: "Trainer") -> None:
        from ups.evaluation.baselines import persistence
        from ups.evaluation.evaluate import evaluate

        kw = dict(
            device=trainer.device,
            autocast=trainer.autocast,
            batch_size=trainer.cfg.trainer.batch_size,
            rank=trainer.env.rank,
            world_size=trainer.env.world_size,
        )
        with trainer.eval_weights():
            objective, model = trainer.objective, trainer.raw_model
            scores = {
                "model": evaluate(lambda b: objective.predict(model, b), model, self.sets, **kw),
                "persistence": evaluate(persistence, None, self.sets, **kw),
                "mean_field": evaluate(self.mean_field, None, self.sets, **kw),
            }
        stages = self.record.setdefault("stages", {})
        previous = stages[list(stages)[-1]] if stages and list(stages)[-1] != trainer.stage_name else None
        stages[trainer.stage_name] = scores
        failed = judge(self.gates, scores, previous)
        self.record.update(passed=not failed, stage=trainer.stage_name, failed=failed, samples=self.samples)
        if trainer.env.is_main:
            path = Path(trainer.run_dir) / FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(self.record, indent=1))
            tmp.replace(path)
        if failed:
            if trainer.env.is_main:  # the leaderboard lists it apart, as gated out
                from ups.leaderboard.hook import on_run_finished

                on_run_finished(trainer.cfg, trainer.run_dir)
            raise GateFailed(
                f"a gate failed after stage {trainer.stage_name} (small evaluation: {self.samples} "
                f"validation trajectories per task): {'; '.join(failed)}. The next stages and the full "
                f"evaluation did not run; numbers in {Path(trainer.run_dir) / FILE}"
            )
        log.info("gates passed after stage %s: %s", trainer.stage_name, ", ".join(n for n, _ in active(self.gates)))
