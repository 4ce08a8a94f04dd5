"""The generative core on toy densities: EDM's sampler reproduces a known 2-component Gaussian
mixture, and consistency distillation brings a one-step student closer to its teacher's sampler."""

import copy

import pytest
import torch
from torch import nn

from ups.generative import EDM, ConsistencyDistillation

MEANS = torch.tensor([[-2.0, 1.0, 0.0], [2.0, -1.0, 0.5]])
STD, WEIGHT0 = 0.35, 0.3  # component std and the first component's weight


def draw(n: int, gen: torch.Generator) -> torch.Tensor:
    comp = (torch.rand(n, generator=gen) >= WEIGHT0).long()
    return MEANS[comp] + STD * torch.randn(n, 3, generator=gen)


class ToyNet(nn.Module):
    """F(x_in, c_noise): an MLP with the noise level as an extra input."""

    def __init__(self, dim: int = 3, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim)
        )

    def forward(self, x, c_noise):
        return self.net(torch.cat([x, c_noise[:, None]], dim=-1))


def fit(loss_fn, net, steps, lr=2e-3):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    edm = EDM(sigma_data=1.5, sigma_max=20.0)
    net = ToyNet()
    losses = fit(lambda: edm.loss(net, draw(512, gen)), net, 1500)
    return edm, net.eval(), losses


def test_edm_loss_falls(teacher):
    _, _, losses = teacher
    assert sum(losses[-100:]) / 100 < 0.85 * sum(losses[:100]) / 100


def test_edm_sampler_matches_the_mixture(teacher):
    edm, net, _ = teacher
    with torch.no_grad():
        x = edm.sample(net, torch.randn(4000, 3, generator=torch.Generator().manual_seed(2)), steps=24)
    comp = (x[:, 0] > 0).long()  # the components are 4 apart along the first axis
    weight0 = (comp == 0).float().mean().item()
    assert abs(weight0 - WEIGHT0) < 0.05, weight0
    for k in range(2):
        part = x[comp == k]
        assert torch.allclose(part.mean(0), MEANS[k], atol=0.15), (k, part.mean(0))
        assert torch.allclose(part.std(0), torch.full((3,), STD), rtol=0.3), (k, part.std(0))
    # an untrained network does not pass these checks, so they can fail
    with torch.no_grad():
        bad = edm.sample(ToyNet(), torch.randn(4000, 3, generator=torch.Generator().manual_seed(2)), steps=24)
    assert not torch.allclose(bad[bad[:, 0] > 0].std(0), torch.full((3,), STD), rtol=0.3)


def test_sampler_evaluation_count():
    calls = []
    net = lambda x, c: calls.append(1) or torch.zeros_like(x)  # noqa: E731
    EDM().sample(net, torch.randn(2, 3), steps=5)
    assert len(calls) == EDM.evaluations(5) == 9


def test_distillation_reduces_the_gap_to_the_teacher(teacher):
    edm, net, _ = teacher
    cd = ConsistencyDistillation(edm, n_levels=18)
    student = copy.deepcopy(net).train()  # Song et al. initialise the student from the teacher
    noise = torch.randn(2000, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        target = edm.sample(net, noise, steps=24)

    def gap():
        with torch.no_grad():
            return ((cd.sample(student, noise) - target) ** 2).sum(-1).mean().item()

    before = gap()
    torch.manual_seed(4)
    gen = torch.Generator().manual_seed(5)
    losses = fit(lambda: cd.loss(student, net, draw(512, gen)), student, 800, lr=5e-4)
    after = gap()
    assert after < 0.5 * before, (before, after, losses[:3], losses[-3:])
