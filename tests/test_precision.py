"""Precision switches (issue 22): TF32 for fp32 matmuls on CUDA by default with hardware.tf32 to turn
it off, bf16 autocast composing with the flash attention kernel, and compilation that says when it
fell back. The CUDA behaviour is marked gpu and skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_cfg
from ups.bench.variants import variant_overrides
from ups.config import ConfigError
from ups.training.compute import apply_tf32, compile_report, compute_context, tf32_enabled

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def keep_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_tf32_is_on_by_default_and_a_switch_turns_it_off() -> None:
    assert compose_cfg(["hardware=gpu"]).hardware.tf32 is True
    assert compose_cfg(["hardware=auto"]).hardware.tf32 is True
    assert compose_cfg(["hardware=gpu", "hardware.tf32=false"]).hardware.tf32 is False
    # the flags are process-wide: set for a CUDA device (no GPU needed to set them), never for a CPU run
    apply_tf32(True, CUDA)
    assert tf32_enabled()
    apply_tf32(False, CUDA)
    assert not tf32_enabled()
    apply_tf32(True, torch.device("cpu"))
    assert not tf32_enabled()


def test_a_cpu_run_keeps_torchs_matmul_precision() -> None:
    torch.set_float32_matmul_precision("highest")
    compute_context(OmegaConf.create({"precision": "fp32", "sdpa_backend": "auto", "tf32": True}), torch.device("cpu"))
    assert torch.get_float32_matmul_precision() == "highest"


def test_flash_attention_in_fp32_on_cuda_is_refused_with_the_fix_named() -> None:
    hw = OmegaConf.create({"precision": "fp32", "sdpa_backend": "flash", "tf32": True})
    with pytest.raises(ConfigError, match="hardware.precision=bf16"):
        compute_context(hw, CUDA)
    compute_context(OmegaConf.merge(hw, {"precision": "bf16"}), CUDA)  # composes
    compute_context(hw, torch.device("cpu"))  # torch's CPU flash kernel takes fp32


def test_the_sdpa_flash_variant_runs_in_bf16() -> None:
    overrides = variant_overrides("sdpa_flash")
    assert overrides.index("hardware.precision=bf16") > overrides.index("hardware.precision=fp32")  # later wins
    cfg = compose_cfg(["hardware=cpu", *overrides])
    assert cfg.hardware.precision == "bf16" and cfg.hardware.sdpa_backend == "flash"


def test_a_compile_that_fell_back_says_so() -> None:
    before = {"frames_ok": 3, "frames_total": 3, "graph_breaks": 0}
    failed = compile_report(before, {"frames_ok": 4, "frames_total": 6, "graph_breaks": 1})
    assert failed["failed_frames"] == 2 and "run eagerly" in failed["message"]
    ok = compile_report(before, {"frames_ok": 5, "frames_total": 5, "graph_breaks": 0})
    assert ok["compiled_frames"] == 2 and "message" not in ok
    assert "served it" in compile_report(before, before, reused=True)["message"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tf32_and_bf16_flash_attention_on_a_gpu() -> None:
    hw = compose_cfg(["hardware=gpu", "hardware.sdpa_backend=flash"]).hardware
    context = compute_context(hw, CUDA)
    assert tf32_enabled() and torch.backends.cuda.matmul.fp32_precision == "tf32"
    q = torch.randn(2, 4, 128, 64, device=CUDA, requires_grad=True)  # fp32 leaves: autocast casts
    with context():
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.float32 and torch.isfinite(q.grad).all()
    compute_context(compose_cfg(["hardware=gpu", "hardware.tf32=false"]).hardware, CUDA)
    assert not tf32_enabled()
