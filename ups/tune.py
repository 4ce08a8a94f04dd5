"""``python -m ups.tune [overrides]``: the largest per-device batch that fits this device, for the
composed run (task, model, precision, stage objective), with a safety margin.

Prints it, and writes a snippet (``tune.out`` in the run directory) to put in ``conf/experiment/``
and use as ``experiment=<name>``, or to paste into a ``hardware/`` preset or a sweep. The search is
``ups/training/batch_tuner.py``; its settings are ``tune.*`` (docs/sweeps.md#batch-size-tuner).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ups.config import register_configs
from ups.errors import ConfigError, exit_on_error

register_configs()


def tune(cfg: DictConfig) -> dict:
    """Search, print and write the snippet; returns {"batch", "largest_fit", "trials", "snippet"}."""
    import torch

    from ups.build import build_run
    from ups.config import validate
    from ups.distributed.env import DistEnv
    from ups.distributed.parallelize import parallelize
    from ups.training import batch_tuner as bt
    from ups.training.optim import build_optimizer

    validate(cfg)
    t = cfg.tune
    if cfg.hardware.threads:
        torch.set_num_threads(cfg.hardware.threads)
    run_dir = Path(cfg.paths.output_dir)
    built = build_run(cfg, run_dir, DistEnv())  # as training builds it: same model, heads, autocast, freezing
    model, device = built.model, built.device
    name, stage = next(iter(cfg.stages.items()))
    objective = built.objectives[name]
    built.freeze(name)
    sets = built.train_sets(DistEnv(), run_dir).windows(objective.horizon, f"stages.{name}", objective.applies)
    # Activation checkpointing and compile change a step's memory: apply them as training does (one
    # unsharded process: FSDP2 would hold 1/N of the parameters and optimizer state per rank, so under
    # it the batch found here is a lower bound).
    single = OmegaConf.merge(cfg, {"parallelism": {"strategy": "none"}})
    model = parallelize(model, single, DistEnv(), device)
    step = bt.training_step(
        model,
        sets,
        objective,
        build_optimizer(model, cfg.optim, stage.lr, device),
        device,
        built.compute.autocast,
        t.steps,
    )
    budget = bt.budget_mb(device, t.memory_budget_gb, t.margin)
    largest, trials = bt.search(lambda b: bt.measure(step, b, device, budget, t.oom_above), t.start, t.max_batch)
    if largest == 0:
        raise ConfigError(
            f"not even trainer.batch_size={t.start} fits on {device} within {budget:.0f} MB:\n" + bt.describe(trials)
        )
    # The margin is in the budget already (a batch fits when its peak stays that far below the memory);
    # taking it off the batch as well applied it twice.
    batch = largest
    snippet = (
        f"# @package _global_\n# python -m ups.tune on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"{len(trials)} trials; the largest batch whose peak stayed {t.margin:.0%} below the memory: {largest}.\n"
        f"# Task {cfg.task.name}, model {cfg.model._target_}, precision {cfg.hardware.precision}.\n"
        f"trainer:\n  batch_size: {batch}\n"
    )
    out = run_dir / t.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(snippet)
    print(
        f"trials on {device} (budget {budget:.0f} MB):\n{bt.describe(trials)}\n"
        f"largest batch that fits (peak {t.margin:.0%} below the memory): trainer.batch_size={batch}"
        + (" (tune.max_batch: larger ones were not tried)" if largest == t.max_batch else "")
        + "\n"
        f"snippet: {out} (copy it to conf/experiment/tuned.yaml and run with experiment=tuned)",
        flush=True,
    )
    return {"batch": batch, "largest_fit": largest, "trials": trials, "snippet": out}


@hydra.main(version_base="1.3", config_path="pkg://ups.conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """Tune; a config or data error, or no batch that fits, is one paragraph on stderr and exit 1."""
    with exit_on_error():
        tune(cfg)


if __name__ == "__main__":
    main()
