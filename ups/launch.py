"""Start the job's ranks, or join the ones a launcher already started.

- Under torchrun, a submitit/SLURM task or our own elastic launch, RANK/WORLD_SIZE are set: this
  process is one rank and runs :func:`ups.runner.run` directly.
- Otherwise, if the config asks for N > 1 ranks on this node, the parent (which composed the config
  once, so there is one run directory) starts N workers with torch's elastic launcher: c10d
  rendezvous on a free localhost port, ``parallelism.max_restarts`` restarts, each resuming from the
  run directory's newest checkpoint. Workers get the resolved config as a plain dict (a DictConfig
  holding ``${hydra:...}`` cannot be resolved in a spawned child) and configure their own logging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from ups.config import validate
from ups.distributed.env import RESTART_ENV, DistEnv, check_devices, export_slurm_env, in_launched_rank
from ups.errors import EXPECTED_EXIT, ConfigError, exit_on_error
from ups.training.signals import Interrupted

log = logging.getLogger(__name__)
_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def setup_worker_logging(env: DistEnv, log_file: Path) -> None:
    """Rank 0 logs to the console and the run's one log file; other ranks only warn, on the console."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if env.is_main:
        root.setLevel(logging.INFO)
        handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout), logging.FileHandler(log_file)]
        fmt = _FORMAT
    else:
        root.setLevel(logging.WARNING)
        handlers, fmt = [logging.StreamHandler(sys.stderr)], f"[rank {env.rank}]" + _FORMAT
    for handler in handlers:
        handler.setFormatter(logging.Formatter(fmt))
        root.addHandler(handler)


def _exit_with_parent(interval_s: float = 1.0) -> None:
    """Exit this rank when the process that launched it is gone (kill -9 of the launcher).

    Without it, the surviving ranks wait in their next collective or the closing barrier for
    ``parallelism.timeout_s`` (10 minutes by default) as orphans. A daemon thread polls the parent.
    """
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:  # re-parented: the launcher died
                print(
                    f"rank {os.environ.get('RANK', '?')}: the launcher (pid {parent}) is gone; exiting",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(1)

    threading.Thread(target=watch, name="ups-exit-with-parent", daemon=True).start()


def _worker(container: dict) -> dict:
    """Entry point of a spawned rank."""
    from ups.runner import run

    _exit_with_parent()
    cfg = OmegaConf.create(container)
    env = DistEnv.from_env()
    Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
    setup_worker_logging(env, Path(cfg.paths.output_dir) / "train.log")
    # An expected error: one paragraph, the traceback to train.log, a status the parent knows
    with exit_on_error(f"rank {env.rank}: ", Path(cfg.paths.output_dir) / "train.log", code=EXPECTED_EXIT):
        try:
            return run(cfg, env)
        except Interrupted as err:  # a clean stop, not a failure: no restart
            if err.signum in (signal.SIGTERM, signal.SIGINT):
                # torch's agent turned the same signal into its own shutdown and reads no result; a rank
                # that returned would wait for the agent's "results read" event until it is killed 30 s
                # later. The checkpoint is saved, so leave now.
                os._exit(err.exit_code)
            return {"interrupted": err.signum, "message": str(err)}  # SIGUSR2: the parent re-raises it


def _not_an_expected_stop(record: logging.LogRecord) -> bool:
    """Drop torch's failure report (a traceback of its own join) for a rank that stopped on an expected
    error: that rank printed its one paragraph, and its traceback is in train.log."""
    return f"(exitcode: {EXPECTED_EXIT})" not in record.getMessage()


def _rank_pids() -> list[int]:
    """The ranks this process spawned (Linux /proc): its children running multiprocessing's spawn_main,
    not its other children (multiprocessing's resource tracker)."""
    pids = []
    for children in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(p) for p in children.read_text().split()]
    ranks = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                ranks.append(pid)
    return ranks


def _forward_to_ranks(signum: int, frame: object) -> None:
    """Pass a stop signal the launcher receives (SLURM's SIGUSR2) on to the ranks, which checkpoint and stop."""
    for pid in _rank_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def launch(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured job in this process, as one rank of a launched job, or as N local ranks.

    The process that owns the job (this one, or rank 0 of an external launcher) holds the run
    directory's lock for the whole job, restarts included.
    """
    from ups.training.run_lock import run_lock

    validate(cfg)
    if cfg.parallelism.dry_run:
        from ups.distributed.dry_run import dry_run

        return dry_run(cfg)
    export_slurm_env()
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    launched = DistEnv.from_env() if in_launched_rank() else None
    if launched is not None:  # torchrun or srun started this rank: INFO from rank 0 only, one train.log
        setup_worker_logging(launched, run_dir / "train.log")
    else:
        log_to_run_dir(run_dir / "train.log")
    with run_lock(run_dir, enabled=launched is None or launched.is_main):
        return _launch(cfg)


def log_to_run_dir(log_file: Path) -> None:
    """Make sure this process's log (launcher events: restarts, a failed rank) reaches the run's train.log.

    Hydra writes its log into ``hydra.run.dir``; with ``paths.output_dir`` set elsewhere, the
    run directory would otherwise miss everything the launcher says.
    """
    root = logging.getLogger()
    target = str(log_file.resolve())
    if not any(isinstance(h, logging.FileHandler) and h.baseFilename == target for h in root.handlers):
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(handler)


def _launch(cfg: DictConfig) -> dict[str, Any]:
    p = cfg.parallelism
    world = p.nodes * p.ranks_per_node
    if in_launched_rank() or world == 1:
        from ups.runner import run

        env = DistEnv.from_env()
        if world == 1 and p.max_restarts and not in_launched_rank():  # said, not silently dropped
            log.warning(
                "parallelism.max_restarts=%d is not used by a single process (there is no launcher to "
                "restart it): rerun the same command to resume, or use parallelism=ddp<N>, torchrun or "
                "SLURM's requeue",
                p.max_restarts,
            )
        if env.world_size != world:
            raise ConfigError(
                f"the launcher started {env.world_size} rank(s) but parallelism={p.name} asks for "
                f"{world} (nodes x ranks_per_node); make them agree, e.g. "
                f"parallelism.nodes={max(1, env.world_size // env.local_world_size)} "
                f"parallelism.ranks_per_node={env.local_world_size}"
            )
        return run(cfg, env)
    if p.nodes > 1:
        raise ConfigError(
            f"parallelism.nodes={p.nodes}: start multi-node jobs with torchrun on every node or "
            "with srun under SLURM (docs/distributed.md); self-launch covers one node"
        )
    device_type = cfg.hardware.device
    if device_type == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        check_devices(device_type, p.ranks_per_node)
    except RuntimeError as err:
        raise ConfigError(str(err)) from None
    return _launch_local(cfg, device_type)


def _launch_local(cfg: DictConfig, device_type: str) -> dict[str, Any]:
    """Start ``ranks_per_node`` workers; after a failure start them again, up to ``max_restarts`` times.

    Restarts are our loop, not the agent's: with a function entry point, torch 2.13's agent restarts
    workers into the previous attempt's store keys and gloo then dials the dead rank's address. A
    fresh rendezvous per attempt avoids that. Workers learn the attempt from UPS_RESTART_COUNT.
    A stop signal is not a failure: the ranks checkpoint, and the job ends without a restart.
    """
    p = cfg.parallelism
    container = OmegaConf.to_container(cfg, resolve=True)
    # torch's agent turns SIGTERM and SIGINT into SignalException and passes the same signal on to the
    # ranks, which treat it as a stop signal; SIGUSR2 it does not handle, so it is passed on here.
    previous = signal.signal(signal.SIGUSR2, _forward_to_ranks)
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_not_an_expected_stop)
    try:
        for attempt in range(p.max_restarts + 1):
            config = LaunchConfig(
                min_nodes=1,
                max_nodes=1,
                nproc_per_node=p.ranks_per_node,
                run_id=f"ups-{uuid.uuid4().hex[:8]}",
                rdzv_backend="c10d",
                rdzv_endpoint="localhost:0",
                max_restarts=0,
                monitor_interval=0.5,
                start_method="spawn",
            )
            os.environ[RESTART_ENV] = str(attempt)
            log.info(
                "launching %d ranks on this node (%s), attempt %d of %d",
                p.ranks_per_node,
                device_type,
                attempt + 1,
                p.max_restarts + 1,
            )
            try:
                result = elastic_launch(config, _worker)(container)[0]
            except SignalException as err:
                raise Interrupted(
                    int(err.sigval),
                    f"stopped by {signal.Signals(err.sigval).name}: the ranks saved "
                    "a checkpoint at their next step boundary; run the same command again to "
                    "resume",
                ) from None
            except ChildFailedError:
                if attempt == p.max_restarts:
                    raise
                log.warning("a rank failed; restarting all ranks, which resume from the newest checkpoint")
                continue
            if "interrupted" in result:
                raise Interrupted(result["interrupted"], result["message"])
            return result
    finally:
        signal.signal(signal.SIGUSR2, previous)
    raise AssertionError("unreachable")
