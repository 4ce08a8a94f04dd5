"""The one place that reads ranks and the launch environment.

Everything else asks a :class:`DistEnv`; nothing outside ``ups.distributed`` reads RANK or
WORLD_SIZE, so the rest of the code is testable without a process group.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Mapping

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it: run_dir_name is the resolver of hydra.run.dir,
# registered with the config schemas, and --help, --cfg and shell completion should not import torch.

log = logging.getLogger(__name__)
RESTART_ENV = "UPS_RESTART_COUNT"  # set by our own restart loop (ups.launch)


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    restart_count: int = 0  # how often the elastic agent has restarted this job's workers
    under_agent: bool = False  # started by torch's elastic agent (torchrun, UPS's launcher), which relays signals

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "DistEnv":
        """Read torchrun's variables (also set by the elastic launcher and by submitit's export)."""
        env = os.environ if environ is None else environ
        world = int(env.get("WORLD_SIZE", "1"))
        return cls(
            rank=int(env.get("RANK", "0")),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world_size=world,
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
            restart_count=int(env.get(RESTART_ENV, "0")) + int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
            under_agent="TORCHELASTIC_RUN_ID" in env,
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def in_launched_rank(environ: Mapping[str, str] | None = None) -> bool:
    """True when a launcher (torchrun, our elastic launch, submitit's export) already made this a rank."""
    env = os.environ if environ is None else environ
    return "RANK" in env and "WORLD_SIZE" in env


def export_slurm_env() -> bool:
    """Inside a multi-task SLURM step without torchrun, or a job of several tasks under submitit's
    local executor, set RANK/WORLD_SIZE/MASTER_* from the scheduler's variables.

    Works for a plain ``srun`` as well as a submitit job (submitit's own helper only recognises the
    latter); submitit's environment parses node lists such as ``gpu[01-04]``. The master port is
    derived from the job id, the same on every task. Returns True if it exported.
    """
    env = os.environ
    slurm = int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env
    local = env.get("SUBMITIT_EXECUTOR") == "local" and int(env.get("SUBMITIT_LOCAL_NTASKS", "1")) > 1
    if in_launched_rank() or not (slurm or local):
        return False
    if slurm:
        from submitit.slurm.slurm import SlurmJobEnvironment as JobEnvironment
    else:
        from submitit.local.local import LocalJobEnvironment as JobEnvironment

    job = JobEnvironment()
    port = env.get("MASTER_PORT") or str(20000 + int(job.job_id.split("_")[0]) % 40000)
    env.update(
        MASTER_ADDR=job.hostnames[0],
        MASTER_PORT=port,
        RANK=str(job.global_rank),
        WORLD_SIZE=str(job.num_tasks),
        LOCAL_RANK=str(job.local_rank),
        LOCAL_WORLD_SIZE=str(job.num_tasks // job.num_nodes),
    )
    return True


def slurm_requeue(signum: int, environ: Mapping[str, str] | None = None) -> str | None:
    """After a clean stop on SIGUSR2 under SLURM (the time-limit warning of ``--signal=USR2@N``) or
    submitit, have the job requeued, so that it starts again and resumes from the checkpoint just
    saved. Under submitit the signal goes on to submitit's own handler, which requeues the same
    submission (with its ``max_num_timeout`` budget; locally, it restarts the tasks); under a plain
    ``sbatch``, rank 0 runs ``scontrol requeue``. SIGTERM (``scancel``, or a preemption SLURM requeues
    by itself) never requeues. Returns what was done, or None; ``UPS_REQUEUE=0`` turns it off."""
    import signal
    import subprocess

    env = os.environ if environ is None else environ
    if signum != signal.SIGUSR2 or env.get("UPS_REQUEUE", "1") == "0":
        return None
    handler = signal.getsignal(signum)
    if env.get("SUBMITIT_EXECUTOR") and callable(handler):  # ours is gone: training is over
        signal.raise_signal(signum)  # submitit requeues (rank 0) or ignores it (other ranks)
        return "handed the signal to submitit, which requeues the job"
    if "SLURM_JOB_ID" not in env or int(env.get("RANK", env.get("SLURM_PROCID", "0"))) != 0:
        return None
    job = (
        f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        if "SLURM_ARRAY_TASK_ID" in env
        else env["SLURM_JOB_ID"]
    )
    try:
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=60, capture_output=True, text=True)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or err
        return f"could not requeue SLURM job {job} ({str(detail).strip()}); submit it again to resume"
    return f"requeued SLURM job {job}: it resumes from this checkpoint when it starts again"


def _process_start(pid: int) -> dt.datetime | None:
    """Start time of a process, from /proc (Linux); None where that is not available."""
    try:
        ticks = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
        return dt.datetime.fromtimestamp(btime + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def run_dir_name(environ: Mapping[str, str] | None = None) -> str:
    """The run directory below ``outputs/``, the same on every rank of one job.

    Under torchrun every rank composes its own config, so ``${now:}`` could differ between ranks.
    On one node the ranks share their parent, torchrun's agent, whose start time names the run; it
    survives worker restarts, so a restarted job finds its own checkpoints. Across nodes the
    rendezvous id names it (pass ``--rdzv-id``); a SLURM step without torchrun uses the job id.
    """
    env = os.environ if environ is None else environ
    nodes_differ = int(env.get("WORLD_SIZE", "1")) != int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1")))
    if "TORCHELASTIC_RUN_ID" in env:
        if nodes_differ and env["TORCHELASTIC_RUN_ID"] not in ("", "none"):
            return f"run-{env['TORCHELASTIC_RUN_ID']}"
        started = _process_start(os.getppid())
        if started is not None:
            return started.strftime("%Y-%m-%d/%H-%M-%S")
    elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return f"slurm-{env['SLURM_JOB_ID']}"
    return dt.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")


def resolve_device(name: str, env: DistEnv, key: str = "hardware.device") -> torch.device:
    """The one way a device is chosen: ``auto`` picks CUDA when present; ``cuda`` is the GPU of this
    rank's local rank, ``cuda:N`` that GPU. ``key`` names the option in a ConfigError."""
    import torch

    from ups.errors import ConfigError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not name.startswith("cuda:"):
        raise ConfigError(f"{key}={name!r} is not one of auto, cpu, cuda (or cuda:N)")
    if not torch.cuda.is_available():
        fix = "hardware=cpu or hardware=auto" if key == "hardware.device" else f"{key}=cpu or {key}=auto"
        raise ConfigError(
            f"{key}={name} but this machine has no usable CUDA GPU (torch {torch.__version__}); use {fix}"
        )
    return torch.device("cuda", env.local_rank) if name == "cuda" else torch.device(name)


def check_devices(device_type: str, ranks_per_node: int) -> None:
    """Fail before launching when a node is asked for more GPUs than it has."""
    if device_type != "cuda":
        return
    import torch

    have = torch.cuda.device_count()
    if ranks_per_node > have:
        if have == 0:
            raise RuntimeError(
                f"{ranks_per_node} ranks per node need {ranks_per_node} GPUs, but this machine has "
                f"none: run them on the CPU with hardware=cpu"
            )
        raise RuntimeError(
            f"{ranks_per_node} ranks per node need {ranks_per_node} GPUs, but this machine has {have}. "
            f"Use parallelism=ddp{have} (or fsdp2_{have}), set parallelism.ranks_per_node={have}, or run "
            f"{ranks_per_node} CPU ranks with hardware=cpu."
        )


@contextlib.contextmanager
def process_group(env: DistEnv, device: torch.device, backend: str, timeout_s: int) -> Iterator[None]:
    """Join the job's process group for the duration of the block; a no-op for one process.

    The explicit timeout makes a stuck collective fail loudly. On a clean exit the closing barrier
    lets every rank finish its last collective (e.g. a checkpoint save) before the group is
    destroyed; without it gloo sometimes aborted the process. On an error there is no barrier.
    """
    import torch
    import torch.distributed as dist

    if not env.distributed or (dist.is_initialized() and dist.get_world_size() == env.world_size):
        yield
        return
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, timeout=dt.timedelta(seconds=timeout_s), device_id=device if device.type == "cuda" else None
    )
    log.info("rank %d/%d joined the %s process group", env.rank, env.world_size, backend)
    # An error raised in the block leaves here, skipping the barrier: the other ranks may be stuck in a
    # collective this one will never join (an FSDP2 all-gather), and the launcher ends them as soon
    # as this process exits.
    yield
    with contextlib.suppress(Exception):
        dist.barrier()
    dist.destroy_process_group()


def slurm_unavailable(argv: list[str]) -> str | None:
    """The paragraph for ``-m hydra/launcher=slurm`` on a machine without SLURM's ``sbatch``; None
    otherwise. (submitit fails deep inside Hydra's launcher, a 25-line traceback, before any of
    ``main`` runs, so the check has to come first.)"""
    import shutil

    if "hydra/launcher=slurm" not in argv or shutil.which("sbatch"):
        return None
    return (
        "Config error: hydra/launcher=slurm submits the jobs with SLURM's sbatch, which this machine "
        "does not have. Run the sweep on a SLURM login node, or here without the launcher "
        "(drop hydra/launcher=slurm: the jobs run one after another; docs/slurm.md)"
    )
