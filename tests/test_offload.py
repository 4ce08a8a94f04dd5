"""FSDP2's CPU offload (``parallelism.cpu_offload``): the switch, the policy on every sharded unit, the
dry run's memory split, two gloo ranks training with it on CPU, and on a GPU the memory it saves.

On CPU the policy moves nothing (the shards are in host memory already) and pinning is off (it needs
an accelerator), but the sharding, the host-side gradients and the CPU optimizer step run the same
code as on a GPU; only the host-to-device copies and the memory saved need CUDA (the gpu tests).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

from tests.test_distributed import launch, losses, ok
from ups.config import validate
from ups.distributed import dry_run, parallelize
from ups.errors import ConfigError


def test_offload_needs_fsdp2(tiny_cfg) -> None:
    for layout in ("single", "ddp2"):
        with pytest.raises(ConfigError, match="parallelism.cpu_offload=true needs parallelism.strategy=fsdp2"):
            validate(tiny_cfg(f"parallelism={layout}", "parallelism.cpu_offload=true"))
    validate(tiny_cfg("parallelism=fsdp2_2", "parallelism.cpu_offload=true"))


def test_a_misspelt_switch_names_the_key(tiny_cfg) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        tiny_cfg("parallelism=fsdp2_2", "parallelism.cpu_ofload=true")
    assert "cpu_ofload" in str(err.value.__cause__ or err.value)
    with pytest.raises(ConfigCompositionException):
        tiny_cfg("parallelism=fsdp2_2", "parallelism.cpu_offload=maybe")


def test_policy_pins_only_beside_an_accelerator() -> None:
    assert type(parallelize.fsdp_offload(False, True, torch.device("cuda"))) is OffloadPolicy
    on_gpu = parallelize.fsdp_offload(True, True, torch.device("cuda"))
    assert isinstance(on_gpu, CPUOffloadPolicy) and on_gpu.pin_memory
    assert not parallelize.fsdp_offload(True, False, torch.device("cuda")).pin_memory
    on_cpu = parallelize.fsdp_offload(True, True, torch.device("cpu"))
    assert isinstance(on_cpu, CPUOffloadPolicy) and not on_cpu.pin_memory  # torch: "Cannot access accelerator"


def test_offloaded_mesh_on_cuda_gets_gloo_for_host_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gradients' norm is a collective on host tensors once they are offloaded: NCCL alone cannot."""
    import torch.distributed.device_mesh as device_mesh

    seen = []
    monkeypatch.setattr(device_mesh, "init_device_mesh", lambda *a, **k: seen.append((a, k)))
    parallelize.fsdp_mesh(torch.device("cuda", 0), 4, cpu_offload=True)
    parallelize.fsdp_mesh(torch.device("cuda", 0), 4, cpu_offload=False)
    parallelize.fsdp_mesh(torch.device("cpu"), 4, cpu_offload=True)
    assert [k["backend_override"] for _, k in seen] == [{0: "cpu:gloo,cuda:nccl"}, None, None]
    assert all(a == (d, (4,)) for (a, _), d in zip(seen, ["cuda", "cuda", "cpu"]))


def _dry_run(tiny_cfg, monkeypatch: pytest.MonkeyPatch, offload: bool) -> tuple[dict, list[dict]]:
    calls = []
    real = parallelize.fully_shard
    monkeypatch.setattr(parallelize, "fully_shard", lambda m, **k: calls.append(k) or real(m, **k))
    cfg = tiny_cfg("parallelism=fsdp2_4", "model=large", f"parallelism.cpu_offload={str(offload).lower()}")
    return dry_run.dry_run(cfg), calls


def test_every_sharded_unit_gets_the_policy_and_the_dry_run_moves_the_shards_to_host(
    tiny_cfg, monkeypatch, capsys
) -> None:
    on, calls = _dry_run(tiny_cfg, monkeypatch, offload=True)
    assert len(calls) > 2 and all(isinstance(k["offload_policy"], CPUOffloadPolicy) for k in calls)
    assert "offloaded to host memory (parallelism.cpu_offload, pinned" in capsys.readouterr().out
    off, calls = _dry_run(tiny_cfg, monkeypatch, offload=False)
    assert all(type(k["offload_policy"]) is OffloadPolicy for k in calls)

    sharded = ("params", "grads", "adamw_state")
    assert on["cpu_offload"] and not off["cpu_offload"] and off["host_memory_gb"] == {}
    assert on["parameters_per_rank"] == off["parameters_per_rank"] < on["parameters"] / 3
    assert {k: on["host_memory_gb"][k] for k in sharded} == {k: off["memory_gb"][k] for k in sharded}
    assert not set(sharded) & set(on["memory_gb"])  # the device keeps the gathered block and activations
    moved = sum(off["memory_gb"][k] for k in sharded)
    assert on["memory_per_rank_gb"] == pytest.approx(off["memory_per_rank_gb"] - moved)
    assert on["host_memory_per_rank_gb"] == pytest.approx(moved)
    assert on["host_memory_per_node_gb"] == pytest.approx(4 * moved)
    assert on["parameters_per_rank"] * 16 / 2**30 == pytest.approx(moved)  # fp32 shard + grad + 2 moments


def test_two_gloo_ranks_train_offloaded_as_without(data_dir: Path, tmp_path: Path) -> None:
    """Offloading changes where the shards live, not the arithmetic: the same losses, step by step."""
    common = ["parallelism=fsdp2_2", "trainer.max_steps=6", "trainer.batch_size=4", "hardware.threads=1"]
    plain = ok(launch(tmp_path / "plain", data_dir, *common))
    offloaded = ok(launch(tmp_path / "offload", data_dir, *common, "parallelism.cpu_offload=true"))
    assert "FSDP2 CPU offload" in offloaded.stdout + offloaded.stderr
    assert "FSDP2 CPU offload" not in plain.stdout + plain.stderr
    one, two = losses(tmp_path / "plain"), losses(tmp_path / "offload")
    assert sorted(two) == list(range(1, 7))
    assert two == pytest.approx(one, rel=1e-6, abs=1e-7)
    assert (tmp_path / "offload" / "checkpoints" / "operator" / "final").is_dir()


# ---- GPU only (pytest -m gpu; launch/bench_gpu.sh runs them) ----


def _gpu_peak_step(offload: bool) -> int:
    """Peak GPU memory of two training steps of a 32M-parameter MLP, each layer sharded as apply_fsdp
    shards a block (its policies, its mesh), on one rank."""
    import torch.distributed as dist
    from torch import nn

    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("cpu:gloo,cuda:nccl", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            device = torch.device("cuda", torch.cuda.current_device())
            torch.manual_seed(0)
            model = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(8)]).to(device)
            mesh = parallelize.fsdp_mesh(device, 1, offload)
            policy = parallelize.fsdp_offload(offload, True, device)
            for unit in [*model, model]:
                parallelize.fully_shard(
                    unit, mesh=mesh, mp_policy=parallelize.fsdp_policy("fp32"), offload_policy=policy
                )
            opt = torch.optim.AdamW(model.parameters(), fused=True)
            where = {p.to_local().device.type for p in model.parameters()}
            assert where == ({"cpu"} if offload else {"cuda"})
            before = [p.to_local().clone() for p in model.parameters()]
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            for _ in range(2):  # the second step has the optimizer state
                model(torch.randn(64, 2048, device=device)).square().mean().backward()
                norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
                norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
                assert torch.isfinite(norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            assert all(not torch.equal(b, p.to_local()) for b, p in zip(before, model.parameters()))
            return torch.cuda.max_memory_allocated(device)
        finally:
            dist.destroy_process_group()
            torch.cuda.empty_cache()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offloaded_step_runs_and_holds_less_gpu_memory() -> None:
    on, off = _gpu_peak_step(offload=True), _gpu_peak_step(offload=False)
    # without offload: 32M fp32 parameters, gradients and two moments = 512 MB on the GPU, plus the
    # gathered layers; offloaded: a gathered layer or two (16 MB each), their gradients, activations
    assert on < off / 4, (on, off)
