"""``python -m ups.evaluate run=<run dir>``: every PDEBench metric of a saved run, as JSON and markdown.

The same code scores the model at the end of training (``eval/final_test.*``), so re-evaluating a
finished run's final checkpoint reproduces those numbers. Also installed as ``ups-evaluate``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ups.config import register_configs
from ups.errors import ConfigError, exit_on_error

register_configs()


def evaluate_run(cfg: DictConfig) -> list[Path]:
    """Evaluate the requested checkpoints of ``cfg.run``; returns the files written."""
    from ups.build import trained
    from ups.distributed.env import DistEnv, resolve_device
    from ups.evaluation.loading import load_run
    from ups.evaluation.stage_table import evaluate_stages, has_heads
    from ups.evaluation.suite import EvalPlan, evaluate_suite, write_results
    from ups.exported import is_export

    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split!r} is not one of test, val")
    which = ["final", "best"] if cfg.checkpoint == "both" else [cfg.checkpoint]
    if is_export(cfg.run):  # an export folder (python -m ups.export): its one model, no pickle read
        which = ["export"]
    device = resolve_device(str(cfg.device), DistEnv(), "device")  # as training resolves it, before any work
    written = []
    for name in which:
        if cfg.checkpoint == "both" and name == "best" and not _has_best(Path(cfg.run)):
            print(
                f"{cfg.run}: no complete best checkpoint (the run never saved one); evaluated final only",
                file=sys.stderr,
            )
            continue
        if name == "export":
            from ups.evaluation.export_eval import load_exported_run

            run = load_exported_run(cfg.run, cfg.data_dir, device)
        else:
            run = load_run(cfg.run, name, cfg.data_dir, device, cfg.get("allow_unverified_checkpoints", False))
        autocast = run.autocast  # the run's precision and attention backend
        samples = run.cfg.data.eval_samples if cfg.eval_samples is None else (cfg.eval_samples or None)
        batch = cfg.batch_size or run.cfg.trainer.batch_size
        plan = EvalPlan(run.tasks, cfg.split, device, autocast, batch, samples, run.cfg.data.preload_max_gb)
        results = evaluate_suite(run.predict, run.model, plan)
        meta = {
            "run": str(cfg.run),
            "checkpoint": str(run.checkpoint.relative_to(Path(cfg.run))),
            "weights": run.source,
            "split": cfg.split,
            "device": str(device),
            "eval_samples": samples,
        }
        paths = write_results(Path(cfg.run) / "eval", f"{name}_{cfg.split}", results, run.tasks, meta)
        print((Path(cfg.run) / "eval" / f"{name}_{cfg.split}.md").read_text())
        written += paths
        if has_heads(run.model):  # a staged run: every variant of its stages, as at the end of training
            out, stem = Path(cfg.run) / "eval", f"{name}_{cfg.split}_stages"
            evaluate_stages(trained(run.cfg.stages, run.objectives), run.model, plan, out, meta, stem=stem)
            print((out / f"{stem}.md").read_text())
            written += sorted(out.glob(f"{stem}*"))
    return written


def _has_best(run: Path) -> bool:
    from omegaconf import OmegaConf

    from ups.training.checkpoint import run_checkpoint

    try:
        run_checkpoint(run, OmegaConf.load(run / "config.yaml").stages, "best")
        return True
    except Exception:  # noqa: BLE001 - evaluating best then reports what is wrong
        return (run / "config.yaml").exists() is False


@hydra.main(version_base="1.3", config_path="pkg://ups.conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Evaluate; a missing run, checkpoint or data directory is one paragraph on stderr and exit 1."""
    if OmegaConf.is_missing(cfg, "run"):  # before anything reads cfg.run: one paragraph, not a traceback
        print(
            "Cannot evaluate: run= is required, e.g. python -m ups.evaluate run=outputs/<date>/<time> "
            "(a run directory) or run=<run>/export/final (python -m ups.export)",
            file=sys.stderr,
        )
        sys.exit(1)
    with exit_on_error(f"Cannot evaluate {cfg.run}: "):
        for path in evaluate_run(cfg):
            print(path)


if __name__ == "__main__":
    main()
