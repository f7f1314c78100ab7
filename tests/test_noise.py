"""Noisy BN (Santurkar et al. 2018, sec. 2.1; bnbench.job.models.CovariateNoise) and the measured
shift of each layer's input distribution (diagnostics column input_shift)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from torch import nn

from bnbench.config import validate
from bnbench.job.diagnostics import Diagnostics
from bnbench.errors import ConfigError
from bnbench.job.models import CovariateNoise, build_model
from conftest import make_cfg


def _unit_moments(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = [d for d in range(y.dim()) if d != 1]
    return y.mean(dim=dims), y.std(dim=dims, correction=0)


def test_each_step_draws_each_unit_s_distribution_from_the_stated_ranges():
    """On zeros the output is the noise itself: per unit, its sample mean and std estimate mu_j
    and sigma_j, which must be uniform on (-M, M) and (0, S) (Kolmogorov-Smirnov over 2,000
    units), and a new step draws new ones."""
    m, s_max = 2.0, 3.0
    noise = CovariateNoise(m, s_max, stream_seed=7).train()
    x = torch.zeros(4000, 2000, dtype=torch.float64)
    mu1, sd1 = _unit_moments(noise(x))
    mu2, _ = _unit_moments(noise(x))
    assert stats.kstest((mu1 / m).numpy(), stats.uniform(-1, 2).cdf).pvalue > 0.001
    assert stats.kstest((sd1 / s_max).numpy(), stats.uniform(0, 1).cdf).pvalue > 0.001
    assert abs(stats.pearsonr(mu1.numpy(), mu2.numpy())[0]) < 0.1, "redrawn at every step"
    # entries of one unit: i.i.d. normal around the unit's mean
    z = (noise(x)[:, 0] - 0).numpy()
    assert stats.normaltest(z).pvalue > 0.001


def test_conv_channels_share_one_distribution_over_positions_and_eval_adds_nothing():
    noise = CovariateNoise(1.0, 0.5, stream_seed=3).train()
    x = torch.zeros(400, 16, 6, 6, dtype=torch.float64)
    y = noise(x)
    mu, sd = _unit_moments(y)
    assert (mu.abs() <= 1.0 + 0.01).all() and (sd <= 0.5 * 1.02).all()
    per_position = y.mean(dim=0)  # (C, H, W): each position of a channel estimates the same mean
    assert (per_position - mu.view(16, 1, 1)).abs().max() < 5 * 0.5 / math.sqrt(400)
    noise.eval()
    x = torch.randn(5, 16, 6, 6)
    assert torch.equal(noise(x), x)


def test_the_noise_depends_on_the_seed_only_and_leaves_the_weights_as_without_it():
    plain = build_model(make_cfg("norm=bn_before", "seed=3"), (1, 28, 28), 10)
    noisy = [build_model(make_cfg("norm=noisy_bn_before", "seed=3"), (1, 28, 28), 10) for _ in range(2)]
    other = build_model(make_cfg("norm=noisy_bn_before", "seed=4"), (1, 28, 28), 10)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), noisy[0].state_dict().values()))
    torch.manual_seed(0)
    x = torch.randn(32, 1, 28, 28)
    plain.eval(), noisy[0].eval()
    assert torch.equal(plain(x), noisy[0](x)), "eval mode: noisy BN is BN"
    torch.manual_seed(1)  # the global stream does not matter
    a = noisy[0].train()(x)
    torch.manual_seed(2)
    b = noisy[1].train()(x)
    assert torch.equal(a, b)
    assert not torch.allclose(other.train()(x), a)
    layers = [type(m).__name__ for m in noisy[0].hidden[0]]
    assert layers == ["Linear", "BatchNorm1d", "CovariateNoise", "ReLU"], "the noise follows BN"


@pytest.mark.parametrize("overrides, says", [
    (("norm=noisy_bn_before", "norm.noise_std=-1"), "must be 0 or more"),
    (("norm=none", "norm.noise_mean=1"), "norm=none has none"),
])
def test_bad_noise_settings_are_one_line(overrides, says):
    with pytest.raises(ConfigError, match=says):
        validate(make_cfg(*overrides))


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Sequential(nn.Sequential(nn.Linear(4, 3), nn.Tanh()))
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.hidden(x))


def _w2(a: torch.Tensor, b: torch.Tensor) -> float:
    (ma, sa), (mb, sb) = _unit_moments(a), _unit_moments(b)
    return float(torch.sqrt((ma - mb) ** 2 + (sa - sb) ** 2).mean())


def test_input_shift_is_the_w2_distance_of_each_unit_s_gaussian_fit_between_diagnostics_steps():
    torch.manual_seed(0)
    model = _Two()
    diag = Diagnostics(model, every=1)
    x1 = torch.randn(50, 4)
    x2 = 2 * x1 + 3  # each unit: mean 2m + 3, std 2s
    rows = []
    for x in (x1, x2):
        diag.arm()
        loss = model(x).sum()
        loss.backward()
        diag.read_gradients()
        rows.append(diag.record(len(rows) + 1, 0.0, loss))
    assert [r["input_shift"] for r in rows[0]] == [None, None]
    m, s = _unit_moments(x1)
    by_hand = float(torch.sqrt((m + 3) ** 2 + s ** 2).mean())
    assert rows[1][0]["input_shift"] == pytest.approx(by_hand, rel=1e-6)
    with torch.no_grad():
        h1, h2 = model.hidden(x1), model.hidden(x2)
    assert rows[1][1]["input_shift"] == pytest.approx(_w2(h1, h2), rel=1e-5)
