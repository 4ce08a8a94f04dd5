"""Typed schemas for the config groups the code reads.

The top-level :class:`TrainConfig` is registered as ``train_schema`` and sits first in
``conf/train.yaml``'s defaults, so every group file merges onto a typed node: a misspelt key or a
wrong type fails at compose time with the key named. Cross-field rules live in
:func:`ups.config_checks.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ups.errors import ConfigError  # noqa: F401 - its home is ups.errors; imported from here too
from ups.tool_configs import BenchConfig, TuneConfig


@dataclass
class SynthConfig:
    """Size of the small files generated when a task's data is absent."""

    n_samples: Optional[int] = None  # None: the generator's small default
    nx: Optional[int] = None
    nt: Optional[int] = None
    seed: int = 0
    options: Dict[str, Any] = field(default_factory=dict)  # passed on as generate(**options), e.g. variant: turb


@dataclass
class DatasetConfig:
    """One PDEBench family as used in a run (facts about the family live in ups.data.registry)."""

    family: str = MISSING
    files: List[str] = MISSING  # glob patterns relative to paths.data_dir
    reduced_resolution: int = 1
    reduced_resolution_t: int = 1
    reduced_batch: int = 1
    initial_step: int = 10
    max_samples: Optional[int] = None  # cap per file, like PDEBench's num_samples_max
    synth: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class TaskConfig:
    name: str = MISSING
    datasets: Dict[str, DatasetConfig] = field(default_factory=dict)
    note: Optional[str] = None  # one line logged once per run, e.g. what an alias stands for


@dataclass
class SamplerConfig:
    strategy: str = "balanced"  # proportional | balanced | temperature
    temperature: float = 2.0
    mode: str = "task"  # task: one task per global batch; mixed: tasks mixed within a batch
    weights: Dict[str, float] = field(default_factory=dict)  # task name -> factor on its probability (1)


@dataclass
class DataConfig:
    generate: Optional[bool] = None  # write small synthetic files when absent; None: only into the default `data`
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    num_workers: int = 0
    prefetch_factor: Optional[int] = None  # batches each loader worker reads ahead (None: torch's 2)
    preload_max_gb: float = 2.0  # read a task into memory when its split is smaller than this
    # train on every rotated and reflected copy of a sample that its family's physics allows
    # (Darcy, 2D reaction-diffusion: ups/data/symmetry.py); the copies count as samples
    augment: bool = False
    eval_samples: Optional[int] = None  # cap on trajectories per task in validation rollouts
    latent_cache_dir: Optional[str] = None  # None: <run dir>/latent_cache
    nonfinite: str = "error"  # samples holding NaN/Inf: error (default) | skip (with a warning)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    fused: Optional[bool] = None  # None: fused on CUDA and CPU, foreach elsewhere
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | constant | cosine_time (over trainer.time_budget_s)
    min_lr_ratio: float = 0.05
    grad_clip: Optional[float] = 1.0


@dataclass
class ParallelismConfig:
    """How many ranks, how they share the model, and how they are launched."""

    name: str = "single"
    strategy: str = "none"  # none | ddp | fsdp2
    nodes: int = 1
    ranks_per_node: int = 1
    backend: str = "auto"  # auto: nccl on CUDA, gloo on CPU
    timeout_s: int = 600  # process-group timeout: a stuck collective fails instead of hanging forever
    max_restarts: int = 0  # self-launch: restart all ranks this often after a failure (resuming)
    dry_run: bool = False  # build and shard the model for this layout on a fake process group; report
    # FSDP2 only: the sharded parameters, gradients and AdamW state live in host memory (torch's
    # CPUOffloadPolicy); each block is copied to the GPU for its all-gather, the optimizer steps on the CPU
    cpu_offload: bool = False
    cpu_offload_pin_memory: bool = True  # page-locked host copies, so transfers overlap compute (GPU only)


@dataclass
class FaultsConfig:
    """Injected failures, for tests of the collective-safe trainer. All off by default."""

    oom_rank: Optional[int] = None
    oom_step: Optional[int] = None  # raise an out-of-memory error in this rank's forward at this step
    nan_rank: Optional[int] = None
    nan_step: Optional[int] = None  # make this rank's loss NaN at this step
    crash_rank: Optional[int] = None
    crash_step: Optional[int] = None  # os._exit(1) this rank after this step (first attempt only)
    restore_rng: bool = True  # false only for the negative control showing resume needs the RNG state


@dataclass
class HardwareConfig:
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 (autocast; parameters stay fp32)
    tf32: bool = True  # CUDA: fp32 matmuls and convolutions on TF32 tensor cores; false: full fp32
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead | max-autotune | ...
    compile_scope: str = (
        "blocks"  # blocks: each repeated block; model: the whole forward and backward, one graph per task
    )
    activation_checkpointing: bool = False
    checkpoint_every: int = 1  # with activation_checkpointing: every k-th block recomputes
    sdpa_backend: str = "auto"  # attention kernel: auto (torch picks) | flash | efficient | math | cudnn
    threads: Optional[int] = None  # torch intra-op threads; None: torch's default


def _next_step() -> Dict[str, Any]:
    return {"_target_": "ups.objectives.NextStep"}


@dataclass
class StageConfig:
    """One training stage as data: what it optimises, for how long, starting from what.

    Its name is its key under ``stages``; the stages run in the order they are listed.
    """

    objective: Dict[str, Any] = field(default_factory=_next_step)  # _target_ + arguments (ups/objectives/)
    steps: Optional[int] = None  # None: trainer.max_steps; 0: the stage is skipped
    lr: Optional[float] = None  # None: optim.lr
    freeze: List[str] = field(default_factory=list)  # module groups kept fixed (the model's spec names them)
    init_from: Optional[str] = None  # a checkpoint folder whose model weights the stage starts from
    latent_cache: bool = True  # with a frozen encoder, encode the training windows once and read the cache


@dataclass
class TrainerConfig:
    max_steps: int = 2000
    batch_size: int = 16  # per device
    accum_steps: int = 1
    # Fixed global batch: accum_steps = global_batch / (batch_size x world size), derived at compose
    # time and again from the ranks actually joined, so a sweep over GPU count compares like with like.
    global_batch: Optional[int] = None
    eval_every: Optional[int] = None  # steps; None: once per epoch
    log_every: int = 10
    seed: int = 0
    steps_per_epoch: Optional[int] = None  # None: one pass over the training windows
    on_oom: str = "skip"  # skip | stop: what every rank does when any rank runs out of memory in forward
    on_nonfinite: str = "skip"  # skip | stop: on a non-finite loss or gradient norm on any rank
    max_consecutive_skips: int = 10  # stop once this many steps in a row were skipped (diverged weights)
    time_budget_s: Optional[float] = None  # stop training (then evaluate) after this much wall-clock time
    keep_last_k: int = 2  # step checkpoints kept per stage
    resume: bool = True  # continue from the newest complete checkpoint in the run directory
    overwrite: bool = False  # with resume=false: delete a run directory's checkpoints and metrics and start clean
    allow_unverified_checkpoints: bool = False  # load checkpoints that lack checksums.json (trusted sources only)
    allow_data_change: bool = False  # resume although the data files differ from those the checkpoint recorded
    check_memory: bool = True  # refuse a batch whose estimated step memory exceeds the memory available


@dataclass
class PathsConfig:
    data_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class ClusterConfig:
    """What a SLURM job asks for (``conf/cluster/``), read by ``hydra/launcher=slurm``; copy
    ``conf/cluster/example.yaml`` and pass ``cluster=<yours>``. Unused without that launcher."""

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    timeout_min: int = 240  # the job's time limit
    cpus_per_task: int = 8
    mem_gb: Optional[int] = None
    signal_delay_s: int = 120  # SIGUSR2 this long before the limit: checkpoint, then requeue
    max_requeues: int = 3  # time-limit requeues of one job before it is left to end


@dataclass
class EvalConfig:
    """The small evaluation after each stage that the gates read (``ups/gates.py``)."""

    small: int = 4  # validation trajectories per task (the first ones: the same subset every time)


@dataclass
class LeaderboardConfig:
    """Where a finished run appends its row (``ups/leaderboard/``); None: nowhere."""

    path: Optional[str] = None  # a folder: rows.jsonl, leaderboard.md, leaderboard.csv


@dataclass
class TrainConfig:
    task: TaskConfig = MISSING
    model: Any = MISSING  # typed by its family's schema, beside the model (ups/models/schemas.py); register_configs
    parallelism: ParallelismConfig = MISSING
    hardware: HardwareConfig = MISSING
    optim: OptimConfig = MISSING
    stages: Dict[str, StageConfig] = field(default_factory=dict)
    callbacks: Dict[str, Any] = field(default_factory=dict)  # name -> {_target_: ..., args}: conf/callbacks/
    logger: Dict[str, Any] = field(default_factory=dict)  # name -> {_target_: ..., args}: conf/logger/
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    leaderboard: LeaderboardConfig = field(default_factory=LeaderboardConfig)
    gates: Dict[str, Any] = field(default_factory=dict)  # name -> {kind: ..., args}: conf/gates/
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class EvaluateConfig:
    """``python -m ups.evaluate``: which run, which checkpoints, which split."""

    run: str = MISSING  # a run directory (holds config.yaml and checkpoints/), or an export folder (ups.export)
    checkpoint: str = "both"  # final | best | both | a step folder name such as step_00000400
    split: str = "test"  # test | val
    eval_samples: Optional[int] = None  # trajectories per task; None: as the run evaluated, 0: all of them
    batch_size: Optional[int] = None  # None: the run's trainer.batch_size
    data_dir: Optional[str] = None  # None: the run's paths.data_dir
    device: str = "auto"  # auto | cpu | cuda
    allow_unverified_checkpoints: bool = False  # load checkpoints that lack checksums.json (trusted sources only)


def register_configs() -> None:
    """Register the schemas and the resolvers the config files use.

    Each model family's schema is stored as ``schema/model/<name>``; ``conf/model/<x>.yaml`` lists
    it first (``/schema/model/<name>@_here_``), so its keys are checked against that family's fields.
    """
    from omegaconf import OmegaConf

    # Both import without torch: --help, --cfg and shell completion run this and compose, nothing more.
    from ups.distributed.env import run_dir_name
    from ups.models.schemas import model_schemas

    _share_config_store()
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    for name, schema in model_schemas().items():  # each beside its model, read without importing it
        cs.store(group="schema/model", name=name, node=schema)
    OmegaConf.register_new_resolver("ups.run_dir", run_dir_name, replace=True)
    OmegaConf.register_new_resolver("ups.sweep_group", _sweep_group, replace=True)
    OmegaConf.register_new_resolver("ups.job_name", _job_name, replace=True)
    OmegaConf.register_new_resolver("ups.config_groups", config_groups, replace=True)
    OmegaConf.register_new_resolver("ups.app_name", app_name, replace=True)


def app_name() -> str:
    """The command as typed, for ``--help``: ``ups.bench`` for ``python -m ups.bench`` (whose module Hydra
    calls ``__main__``), ``ups-train`` for the console script."""
    import sys

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return spec.name.removesuffix(".__main__")
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "ups"


def config_groups() -> str:
    """``group: option, ...`` per config group shipped in ``ups.conf``, for ``--help``: the files a user
    chooses from, without the internal ``schema/model`` group Hydra's own listing adds."""
    from importlib.resources import files

    lines = []

    def walk(node: Any, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir() and child.name != "__pycache__":
                options = sorted(c.name[:-5] for c in child.iterdir() if c.name.endswith(".yaml"))
                if options:
                    lines.append(f"{prefix}{child.name}: {', '.join(options)}")
                walk(child, f"{prefix}{child.name}/")

    walk(files("ups.conf"), "")
    return "\n".join(lines)


def _share_config_store() -> None:
    """Deep copies of Hydra's config repository share the one ConfigStore instead of copying it.

    Hydra 1.3 copies the repository, store included, per group listed: 110 copies were 2 of the 3 s
    of ``--help``. The store is a singleton written only at registration; Hydra 1.4 stops copying
    it (facebookresearch/hydra#2928). Set on the class so launchers still pickle the store."""
    ConfigStore.__deepcopy__ = _same_store  # type: ignore[attr-defined]


def _same_store(store: ConfigStore, memo: Dict[int, Any]) -> ConfigStore:
    return store


def _hydra() -> Any:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _sweep_group() -> Optional[str]:
    """A multirun's sweep directory (one W&B group per sweep); None for a single run."""
    from hydra.types import RunMode

    hc = _hydra()
    return str(hc.sweep.dir) if hc is not None and hc.mode == RunMode.MULTIRUN else None


def _job_name() -> Optional[str]:
    """A multirun job's number and overrides (its W&B run name); None for a single run."""
    from hydra.types import RunMode

    hc = _hydra()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    return f"{hc.job.num}:{hc.job.override_dirname}" if hc.job.override_dirname else str(hc.job.num)


# The cross-field rules live in their own module; importable from here as before.
from ups.config_checks import resolve_global_batch, validate  # noqa: E402,F401
