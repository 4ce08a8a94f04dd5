"""EDM (Karras et al. 2022, "Elucidating the design space of diffusion-based generative models").

The denoiser is ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` with the preconditioning
that keeps F's inputs and targets at unit variance for every noise level; training draws
``ln sigma ~ N(p_mean, p_std^2)`` and weights the squared error by ``1 / c_out^2``; sampling
integrates the probability-flow ODE with Heun's method on the ``rho = 7`` schedule, which costs
``2 * steps - 1`` network evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

Net = Callable[..., Tensor]


def _expand(sigma: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) broadcasting against x."""
    return sigma.reshape(-1, *([1] * (x.dim() - 1)))


@dataclass(frozen=True)
class EDM:
    """The noise schedule and preconditioning; ``sigma_data`` is the data's std (UPS scales to 1)."""

    sigma_data: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if self.sigma_data <= 0 or self.p_std <= 0 or self.rho <= 0:
            raise ValueError("sigma_data, p_std and rho must be > 0")

    def denoise(self, net: Net, x: Tensor, sigma: Tensor, **cond: Any) -> Tensor:
        """D(x; sigma): the network's estimate of the clean sample, for sigma of shape (B,)."""
        s, sd = _expand(sigma, x), self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        c_in = 1 / (s**2 + sd**2).sqrt()
        out = net((c_in * x).to(x.dtype), (sigma.log() / 4).to(x.dtype), **cond)
        return c_skip * x + c_out * out.to(x.dtype)

    def loss(self, net: Net, x0: Tensor, **cond: Any) -> Tensor:
        """The weighted denoising loss, a scalar; noise levels and noise come from torch's RNG."""
        sigma = (torch.randn(x0.shape[0], device=x0.device) * self.p_std + self.p_mean).exp()
        s, sd = _expand(sigma, x0), self.sigma_data
        weight = (s**2 + sd**2) / (s * sd) ** 2
        denoised = self.denoise(net, x0 + torch.randn_like(x0) * s, sigma, **cond)
        return (weight * (denoised.float() - x0.float()) ** 2).mean()

    def sigmas(self, steps: int, device: torch.device | str = "cpu") -> Tensor:
        """The ``steps`` noise levels from sigma_max down to sigma_min, then 0 (``steps + 1`` values)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        ramp = (
            torch.linspace(0, 1, steps, device=device, dtype=torch.float64)
            if steps > 1
            else torch.zeros(1, device=device, dtype=torch.float64)
        )
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        s = (hi + ramp * (lo - hi)) ** self.rho
        return torch.cat([s, s.new_zeros(1)]).float()

    def sample(self, net: Net, noise: Tensor, steps: int, **cond: Any) -> Tensor:
        """Integrate the probability-flow ODE from ``noise * sigma_max`` (noise ~ N(0, I)) to a sample.

        Heun's second-order method, Euler on the last step to sigma 0: ``2 * steps - 1`` evaluations.
        """
        s = self.sigmas(steps, noise.device)
        x = noise * s[0]
        for i in range(steps):
            cur, nxt = s[i], s[i + 1]
            d = (x - self.denoise(net, x, cur.expand(x.shape[0]), **cond)) / cur
            x_next = x + (nxt - cur) * d
            if nxt > 0:
                d2 = (x_next - self.denoise(net, x_next, nxt.expand(x.shape[0]), **cond)) / nxt
                x_next = x + (nxt - cur) * (d + d2) / 2
            x = x_next
        return x

    @staticmethod
    def evaluations(steps: int) -> int:
        """Network evaluations of :meth:`sample` with ``steps`` steps."""
        return 2 * steps - 1
