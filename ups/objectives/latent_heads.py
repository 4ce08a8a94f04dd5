"""What the diffusion, consistency and steady-prior objectives run inside the model's forward.

Each function is a ``run`` program of :meth:`ups.models.surrogate.LatentSurrogate.forward`:
``fn(model, task, x, coords, cond, **kw)`` on the unwrapped model, called through the wrapped
one, so data-parallel wrappers see one forward per loss. The frozen base model runs without
building a graph; only the head being trained (and, for the steady prior, the frozen decoder it
must backpropagate through) does.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ups.generative import ConsistencyDistillation
from ups.objectives.next_step import change_base


def call(model: nn.Module, batch: dict, program: Callable, **kw) -> Tensor:
    """Run ``program`` on a batch through the (wrapped) model's forward."""
    return model(batch["task"], batch["x"], batch["coords"], batch["cond"], run=program, **kw)


def next_context(x: Tensor, y: Tensor) -> Tensor:
    """The context one frame later: drop the oldest frame of ``x``, append ``y`` (one frame)."""
    return torch.cat([x[..., y.shape[-1] :], y], dim=-1)


def operator_latents(model: nn.Module, task: str, x: Tensor, coords: Tensor, cond: Tensor) -> Tensor:
    """The operator's predicted next latent tokens from the context."""
    return model.step(task, model.encode(task, x, coords), cond)


def invert_decoder(model: nn.Module, task: str, z: Tensor, coords: Tensor, y: Tensor, steps: int, lr: float) -> Tensor:
    """Latent tokens that decode to ``y``: ``steps`` Adam steps on ``|decode(z') - y|^2`` from ``z``.

    Gradients are taken for the tokens alone (``torch.autograd.grad``), so no parameter collects any.
    Starting at the operator's prediction and stopping early keeps the correction small.
    """
    z = z.detach().float().clone()
    m, v = torch.zeros_like(z), torch.zeros_like(z)
    with torch.enable_grad():
        for i in range(1, steps + 1):
            zi = z.requires_grad_(True)
            err = nn.functional.mse_loss(model.decode(task, zi, coords).float(), y.float(), reduction="sum")
            (g,) = torch.autograd.grad(err, [zi])
            z = zi.detach()
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g  # Adam's moments, bias-corrected below
            z = z - lr * (m / (1 - 0.9**i)) / ((v / (1 - 0.999**i)).sqrt() + 1e-8)
    return z


def residual(
    model: nn.Module,
    task: str,
    x: Tensor,
    coords: Tensor,
    cond: Tensor,
    y: Tensor,
    invert_steps: int = 0,
    invert_lr: float = 0.05,
) -> tuple[Tensor, Tensor]:
    """(operator's prediction z_pred, target latent - z_pred), without gradients. The target latent
    is the encoder's latent of the true next context, or with ``invert_steps`` the decoder's inverse
    of the true next frame (see :func:`invert_decoder`)."""
    with torch.no_grad():
        z_pred = operator_latents(model, task, x, coords, cond)
        if invert_steps:
            # the latent that decodes to the true next frame in the model's own convention (the change)
            goal = y - change_base(model, x, y.shape[-1])
            target = invert_decoder(model, task, z_pred, coords, goal, invert_steps, invert_lr).to(z_pred.dtype)
        else:
            target = model.encode(task, next_context(x, y), coords)
        return z_pred, target - z_pred


def calibrate(model: nn.Module, task: str, x: Tensor, coords: Tensor, cond: Tensor, *, y: Tensor, head: str) -> Tensor:
    """Set the head's residual scale of this task to the residual's RMS on this batch; returns it."""
    net = model.stage_heads[head]
    _, r = residual(model, task, x, coords, cond, y, **net.target)
    rms = r.float().pow(2).mean().sqrt().clamp_min(1e-6)
    with torch.no_grad():
        net.scales[net.index[model.task_key(task)]] = rms
    return rms


def copy_weights(
    model: nn.Module, task: str, x: Tensor, coords: Tensor, cond: Tensor, *, src: Callable, dst: str
) -> Tensor:
    """Copy the parameters and buffers of ``src(model)`` into ``stage_heads[dst]`` (same architecture)."""
    source, target = src(model), model.stage_heads[dst]
    with torch.no_grad():
        for a, b in zip(target.state_dict().values(), source.state_dict().values(), strict=True):
            a.copy_(b)
    return x.new_zeros(())


def diffusion_loss(
    model: nn.Module, task: str, x: Tensor, coords: Tensor, cond: Tensor, *, y: Tensor, head: str
) -> Tensor:
    """EDM loss of the head on the scaled residual, conditioned on the operator's prediction."""
    net, key = model.stage_heads[head], model.task_key(task)
    z_pred, r = residual(model, task, x, coords, cond, y, **net.target)
    return net.edm.loss(net, r / net.scale(key), z_pred=z_pred, cond=cond, task_key=key)


def distillation_loss(
    model: nn.Module,
    task: str,
    x: Tensor,
    coords: Tensor,
    cond: Tensor,
    *,
    y: Tensor,
    head: str,
    teacher: str,
    n_levels: int,
) -> Tensor:
    """Consistency-distillation loss of the student head against the frozen teacher head."""
    student, key = model.stage_heads[head], model.task_key(task)
    z_pred, r = residual(model, task, x, coords, cond, y, **student.target)
    distill = ConsistencyDistillation(student.edm, n_levels)
    return distill.loss(
        student, model.stage_heads[teacher], r / student.scale(key), z_pred=z_pred, cond=cond, task_key=key
    )


def corrected(
    model: nn.Module,
    task: str,
    x: Tensor,
    coords: Tensor,
    cond: Tensor,
    *,
    head: str,
    sample: Callable,
    k: int,
    generator: torch.Generator | None,
) -> Tensor:
    """(1 + k, B, P, C): the operator's decoded prediction, then ``k`` decodes of it corrected by
    residuals drawn with ``sample(net, noise, **conditioning)``."""
    net, key = model.stage_heads[head], model.task_key(task)
    z_pred = operator_latents(model, task, x, coords, cond)
    b = z_pred.shape[0]
    z_k, cond_k = z_pred.repeat(k, 1, 1), cond.expand(b, -1).repeat(k, 1)
    noise = torch.randn(z_k.shape, generator=generator, device=z_k.device).to(z_k.dtype)
    r = sample(net, noise, z_pred=z_k, cond=cond_k, task_key=key)
    z = torch.cat([z_pred, z_k + r.to(z_k.dtype) * net.scale(key)])
    return model.decode(task, z, coords).reshape(1 + k, b, *coords.shape[1:2], -1)


def steady_map(model: nn.Module, task: str, x: Tensor, coords: Tensor, cond: Tensor, *, head: str) -> Tensor:
    """The steady prior: encode the coefficient, map its tokens with the head, decode the solution."""
    with torch.no_grad():
        z = model.encode(task, x, coords)
    z = model.stage_heads[head](z, cond, model.task_key(task), model.token_shapes[task])
    return model.decode(task, z, coords)
