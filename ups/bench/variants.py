"""The speed switches ``python -m ups.bench`` measures, each as config overrides on the composed run.

The baseline turns every switch off: fp32, eager, raw HDF5 reads (nothing preloaded), AdamW
without the fused kernel, no loader workers. Each other variant is the baseline plus one switch;
``all`` is the baseline plus every switch that is meant to make a step faster (activation
checkpointing trades speed for memory, and the attention backend is left to torch, so neither is in it).
"""

from __future__ import annotations

from typing import Sequence

from ups.errors import ConfigError

BASELINE = [
    "hardware.precision=fp32",
    "hardware.compile=false",
    "data.preload_max_gb=0",
    "optim.fused=false",
    "hardware.activation_checkpointing=false",
    "data.num_workers=0",
    "hardware.sdpa_backend=auto",
]
_WORKERS = ["data.num_workers=2", "data.prefetch_factor=4"]  # pinned memory comes with CUDA

# name -> (overrides on top of the baseline, what it shows)
VARIANTS: dict[str, tuple[list[str], str]] = {
    "baseline": ([], "fp32, eager, raw HDF5 reads, AdamW (foreach, not fused), no workers"),
    "bf16": (["hardware.precision=bf16"], "bf16 autocast"),
    "compile": (["hardware.compile=true"], "torch.compile per block (hardware.compile_mode)"),
    # issue 22's fewer, larger launches: one graph per task (static shapes), backward included, and
    # the optimizer in one fused kernel per parameter group
    "compile_step": (
        ["hardware.compile=true", "hardware.compile_scope=model", "optim.fused=true"],
        "torch.compile of the whole forward and backward (one graph per task) + fused AdamW",
    ),
    "fused_adamw": (["optim.fused=true"], "AdamW's fused kernel"),
    "ac_every": (
        ["hardware.activation_checkpointing=true", "hardware.checkpoint_every=1"],
        "activation checkpointing, every block",
    ),
    "ac_every_2": (
        ["hardware.activation_checkpointing=true", "hardware.checkpoint_every=2"],
        "activation checkpointing, every 2nd block",
    ),
    # flash takes only bf16/fp16 inputs on CUDA: in bf16, so its reference is the bf16 variant
    "sdpa_flash": (
        ["hardware.sdpa_backend=flash", "hardware.precision=bf16"],
        "attention: flash kernel only, bf16 autocast (compare with bf16)",
    ),
    "sdpa_efficient": (["hardware.sdpa_backend=efficient"], "attention: memory-efficient kernel only"),
    "sdpa_math": (["hardware.sdpa_backend=math"], "attention: the math (reference) implementation only"),
    "preload": (["data.preload_max_gb=2"], "training split read into memory once"),
    "workers": (_WORKERS, "2 loader workers, prefetch 4, pinned memory on CUDA"),
    "frozen_encoder": (
        ["stages.{stage}.freeze=[encoder]", "stages.{stage}.latent_cache=false"],
        "encoder frozen, latents encoded every step (the cache's reference)",
    ),
    "latent_cache": (
        ["stages.{stage}.freeze=[encoder]", "stages.{stage}.latent_cache=true"],
        "encoder frozen, latents read from the cache",
    ),
    "all": (
        [
            "hardware.precision=bf16",
            "hardware.compile=true",
            "hardware.compile_scope=model",
            "optim.fused=true",
            "data.preload_max_gb=2",
            *_WORKERS,
        ],
        "bf16 + whole-step compile + fused AdamW + preload + workers",
    ),
    # "all" without compilation: for runs of many tasks (pdebench11: a graph per task to compile) in a
    # short time limit, and to show what compilation adds on top of the rest
    "all_eager": (
        ["hardware.precision=bf16", "optim.fused=true", "data.preload_max_gb=2", *_WORKERS],
        "bf16 + fused AdamW + preload + workers, eager (all without compile)",
    ),
    # CPUs without bf16 matrix units run bf16 autocast slower than fp32: "all" without it
    "all_fp32": (
        [
            "hardware.compile=true",
            "hardware.compile_scope=model",
            "optim.fused=true",
            "data.preload_max_gb=2",
            *_WORKERS,
        ],
        "whole-step compile + fused AdamW + preload + workers (fp32)",
    ),
}


def variant_overrides(name: str, stage: str = "operator") -> list[str]:
    """The baseline's overrides, then the variant's (later ones win); ``stage``: the stage measured."""
    if name not in VARIANTS:
        raise ConfigError(f"bench.variants has {name!r}; the variants are {', '.join(VARIANTS)}")
    return [o.format(stage=stage) for o in BASELINE + VARIANTS[name][0]]


def check_names(names: Sequence[str]) -> None:
    """Fail before any measurement on an unknown name (a typo would otherwise cost the runs before it)."""
    for name in names:
        variant_overrides(name)
