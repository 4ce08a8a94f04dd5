"""Consistency distillation (Song et al. 2023, "Consistency models", Algorithm 2).

A student ``f(x, sigma)`` learns to map any point of the teacher's probability-flow ODE trajectory
to the trajectory's origin. For adjacent noise levels ``t_n < t_{n+1}`` of an ``n_levels`` Karras
discretisation: ``x_{n+1} = x0 + t_{n+1} z``; one Heun step of the teacher's ODE gives ``x_n``;
the loss is ``|f(x_{n+1}, t_{n+1}) - sg(f(x_n, t_n))|^2``. The target network is the student
itself under stop-gradient (EMA rate 0, as Song & Dhariwal 2023 found to work best). The
parametrisation ``f = c_skip x + c_out F`` with ``c_skip(sigma_min) = 1, c_out(sigma_min) = 0``
makes ``f`` the identity at ``sigma_min``; it matches EDM's preconditioning away from it, so a
student initialised from the teacher starts as the teacher's one-step denoiser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ups.generative.edm import EDM, Net, _expand


@dataclass(frozen=True)
class ConsistencyDistillation:
    """Loss and 1–few step sampler of a consistency student distilled from an EDM teacher."""

    edm: EDM = EDM()
    n_levels: int = 18  # discretisation of [sigma_min, sigma_max] the student is trained on

    def consistency(self, net: Net, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        """f(x, sigma) for sigma of shape (B,): the student's estimate of the trajectory's origin."""
        e, s = self.edm, _expand(sigma, x)
        sd, smin = e.sigma_data, e.sigma_min
        c_skip = sd**2 / ((s - smin) ** 2 + sd**2)
        c_out = (s - smin) * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        out = net((c_in * x).to(x.dtype), (sigma.log() / 4).to(x.dtype), **cond)
        return c_skip * x + c_out * out.to(x.dtype)

    def loss(self, student: Net, teacher: Net, x0: Tensor, **cond: Any) -> Tensor:
        """The distillation loss, a scalar; levels and noise come from torch's RNG."""
        levels = self.edm.sigmas(self.n_levels, x0.device)[:-1].flip(0)  # ascending t_1 < ... < t_N
        n = torch.randint(0, self.n_levels - 1, (x0.shape[0],), device=x0.device)
        t_lo, t_hi = levels[n], levels[n + 1]
        x_hi = x0 + torch.randn_like(x0) * _expand(t_hi, x0)
        with torch.no_grad():
            h = _expand(t_lo - t_hi, x0)
            d = (x_hi - self.edm.denoise(teacher, x_hi, t_hi, **cond)) / _expand(t_hi, x0)
            x_euler = x_hi + h * d
            d2 = (x_euler - self.edm.denoise(teacher, x_euler, t_lo, **cond)) / _expand(t_lo, x0)
            x_lo = x_hi + h * (d + d2) / 2
            target = self.consistency(student, x_lo, t_lo, **cond)
        pred = self.consistency(student, x_hi, t_hi, **cond)
        return ((pred.float() - target.float()) ** 2).mean()

    def sample(
        self,
        net: Net,
        noise: Tensor,
        sigmas: Sequence[float] = (),
        generator: torch.Generator | None = None,
        **cond: Any,
    ) -> Tensor:
        """Multistep consistency sampling: jump from ``noise * sigma_max`` to an origin estimate, then
        re-noise to each further level in ``sigmas`` (descending) and jump again; one evaluation per
        level, so ``sigmas=()`` is the one-step sampler. Re-noising draws from ``generator``."""
        e = self.edm
        full = lambda s: torch.full((noise.shape[0],), float(s), device=noise.device)  # noqa: E731
        out = self.consistency(net, noise * e.sigma_max, full(e.sigma_max), **cond)
        for s in sigmas:
            z = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
            out = self.consistency(net, out + (s**2 - e.sigma_min**2) ** 0.5 * z, full(s), **cond)
        return out
