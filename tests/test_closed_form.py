"""Closed-form sanity pairs: Gaussian shift and radial scaling."""

from __future__ import annotations

import math

import pytest
import torch

from otbench.api import InvalidInput
from otbench.testing import check_task
from otbench_plugins.w1.closed_form import GaussianShift, RadialScaling, gaussian_norm_mean
from otbench_plugins.discrete.exact_lp import ExactLP

CPU = torch.device("cpu")


def test_gaussian_norm_mean_formula():
    assert gaussian_norm_mean(1) == pytest.approx(math.sqrt(2 / math.pi))
    assert gaussian_norm_mean(2, 3.0) == pytest.approx(3.0 * math.sqrt(math.pi / 2))
    x = torch.randn(200_000, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(x.norm(dim=1).mean()) == pytest.approx(gaussian_norm_mean(7), rel=5e-3)


@pytest.mark.parametrize("factor", [2.5, 0.4])
def test_radial_scaling_w1_and_certificate(factor):
    task = RadialScaling(dim=5, factor=factor, scale=1.5)
    problem, truth = task.build(0, CPU, torch.float64)
    x, y = truth.sample_plan(50_000)
    cost = (x - y).norm(dim=1)
    assert abs(float(cost.mean()) - truth.distance) < 4 * float(cost.std()) / math.sqrt(cost.numel())
    # certificate: u = sign(c - 1)|x| is 1-Lipschitz with u(y) - u(x) = |x - y| on the plan
    sign = 1.0 if factor > 1 else -1.0
    assert torch.allclose(sign * (y.norm(dim=1) - x.norm(dim=1)), cost, atol=1e-12)
    g = truth.critic_grad(x)
    assert torch.allclose((x - y) / cost[:, None], g, atol=1e-12)
    # Q is the law of c X: compare mean norms of independent draws
    assert float(truth.sample_q(50_000).norm(dim=1).mean()) == pytest.approx(
        factor * gaussian_norm_mean(5, 1.5), rel=0.01)
    assert torch.allclose(truth.map(x), y)


def test_radial_scaling_sqeuclidean_value():
    _, truth = RadialScaling(dim=3, factor=3.0, scale=0.5, cost="sqeuclidean").build(0, CPU, torch.float64)
    x, y = truth.sample_plan(50_000)
    c = ((x - y) ** 2).sum(1)
    assert truth.distance == pytest.approx(4.0 * 0.25 * 3)
    assert abs(float(c.mean()) - truth.distance) < 4 * float(c.std()) / math.sqrt(c.numel())


def test_exact_lp_close_to_radial_w1_in_low_dimension():
    problem, truth = RadialScaling(dim=2, factor=2.0).build(1, CPU, torch.float32)
    value = ExactLP(n_samples=512).solve(problem).distance
    assert value == pytest.approx(truth.distance, rel=0.1)


def test_gaussian_shift_still_works():
    problem, truth = GaussianShift(dim=3, shift=2.0).build(0, CPU, torch.float32)
    x, y = truth.sample_plan(1000)
    assert truth.distance == 2.0
    assert torch.allclose((y - x).norm(dim=1), torch.full((1000,), 2.0), atol=1e-5)


@pytest.mark.parametrize("cls", [GaussianShift, RadialScaling])
def test_task_contract(cls):
    check_task(cls)


def test_radial_scaling_rejects_bad_parameters():
    for params in ({"factor": 1.0}, {"factor": -2.0}, {"scale": 0.0}, {"dim": 0}, {"cost": "matrix"}):
        with pytest.raises(InvalidInput):
            RadialScaling(**params).build(0, CPU, torch.float32)
