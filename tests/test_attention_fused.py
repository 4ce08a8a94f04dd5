"""Self-attention projects q, k and v in one product and normalises q and k together (issue 22: fewer
ops per step); the values, the gradients and the checkpoint keys are those of the two-product path."""

from __future__ import annotations

import torch

from ups.bench.ops import count_ops
from ups.models.layers import Attention


def _attention() -> Attention:
    torch.manual_seed(0)
    attn = Attention(32, 4)
    with torch.no_grad():  # non-trivial norm weights, so swapping q's and k's would show
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    return attn


def _run(attn: Attention, same: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = torch.randn(3, 10, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    # a view of x is another tensor object with the same values: the two-product (cross) path
    out = attn(x, x if same else x.view_as(x))
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in attn.named_parameters()}
    grads["x"] = x.grad.clone()
    attn.zero_grad(set_to_none=True)
    return out.detach(), grads


def test_one_product_self_attention_matches_the_two_product_path() -> None:
    attn = _attention()
    fused, g_fused = _run(attn, same=True)
    separate, g_separate = _run(attn, same=False)
    torch.testing.assert_close(fused, separate, atol=1e-6, rtol=0)
    assert g_fused.keys() == g_separate.keys()
    for name in g_fused:
        torch.testing.assert_close(g_fused[name], g_separate[name], atol=1e-6, rtol=0, msg=name)


def test_checkpoint_keys_are_unchanged_and_the_fused_path_launches_fewer_ops() -> None:
    attn = _attention()
    assert set(attn.state_dict()) == {
        "to_q.weight",
        "to_q.bias",
        "to_kv.weight",
        "to_kv.bias",
        "q_norm.weight",
        "k_norm.weight",
        "proj.weight",
        "proj.bias",
    }
    fused = sum(count_ops(lambda: _run(attn, same=True)).launches.values())
    separate = sum(count_ops(lambda: _run(attn, same=False)).launches.values())
    assert fused <= separate - 20, (fused, separate)  # 37 and 64 on 2026-12-04


def test_one_product_self_attention_under_bf16_autocast_keeps_the_dtypes() -> None:
    attn = _attention()
    x = torch.randn(2, 6, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, separate = attn(x, x), attn(x, x.view_as(x))
    assert fused.dtype == separate.dtype
    torch.testing.assert_close(fused.float(), separate.float(), atol=2e-2, rtol=2e-2)
