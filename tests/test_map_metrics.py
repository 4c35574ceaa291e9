"""Map and plan metrics: exact values for the true map, the identity and interpolated maps; cheating detection."""

from __future__ import annotations

import math

import pytest
import torch

from otbench.api import Solution
from otbench.metrics import core_metrics
from otbench.metrics.maps import (
    MapCost,
    MapCostError,
    MapL2UVP,
    MapMarginalFit,
    PlanCost,
    PlanCostError,
    PlanMarginalFit,
    energy_distance,
)
from otbench_plugins.maps.tasks import ConvexMap, GaussianW2

CPU = torch.device("cpu")
F64 = torch.float64


@pytest.fixture(scope="module")
def gauss():
    return GaussianW2(dim=3, instance=1).build(0, CPU, F64)


def test_metrics_are_registered():
    names = {cls.name for cls in core_metrics()}
    assert {"map_l2_uvp", "map_cost", "map_cost_error", "plan_cost", "plan_cost_error", "map_marginal_fit",
            "plan_marginal_fit"} <= names


def test_true_map_scores_perfectly(gauss):
    problem, truth = gauss
    sol = Solution(map=truth.map)
    out = MapL2UVP().compute(truth, sol, problem)
    assert out["l2_uvp"] == pytest.approx(0.0, abs=1e-20) and out["map_cosine"] == pytest.approx(1.0, abs=1e-12)
    cost = MapCostError().compute(truth, sol, problem)
    assert cost["map_cost_rel_error"] < 0.05  # Monte Carlo on 8192 draws
    assert MapCost().compute(truth, sol, problem)["map_cost"] == pytest.approx(truth.distance, rel=0.05)
    fit = MapMarginalFit().compute(truth, sol, problem)
    assert fit["map_energy_ratio"] < 5.0  # null ratio: mean ~1, 99th percentile 3.7 in 2-D


def test_identity_and_interpolated_maps_have_known_scores(gauss):
    problem, truth = gauss
    var_q = truth.extra["var_q"]
    identity = MapL2UVP().compute(truth, Solution(map=lambda x: x), problem)
    # L2-UVP of the identity is 100 W2^2 / Var(Q); its displacement is zero, so the cosine is reported as 0
    assert identity["l2_uvp"] == pytest.approx(100 * truth.distance / var_q, rel=0.05)
    assert identity["map_cosine"] == 0.0
    for t in (0.25, 0.5):  # x + t (T* - x): L2-UVP scales by (1 - t)^2, displacement still aligned
        out = MapL2UVP().compute(truth, Solution(map=lambda x, t=t: x + t * (truth.map(x) - x)), problem)
        assert out["l2_uvp"] == pytest.approx((1 - t) ** 2 * 100 * truth.distance / var_q, rel=0.05)
        assert out["map_cosine"] == pytest.approx(1.0, abs=1e-12)
    backwards = MapL2UVP().compute(truth, Solution(map=lambda x: 2 * x - truth.map(x)), problem)
    assert backwards["map_cosine"] == pytest.approx(-1.0, abs=1e-12)
    assert backwards["l2_uvp"] == pytest.approx(4 * 100 * truth.distance / var_q, rel=0.05)


def test_map_collapsing_to_the_mean_is_cheaper_but_flagged():
    problem, truth = ConvexMap(dim=8, n_reference=20_000).build(0, CPU, F64)
    mean_q = truth.sample_q(100_000).mean(0)
    cheat = Solution(map=lambda x: mean_q.expand_as(x).clone())
    gap = MapCostError().compute(truth, cheat, problem)["map_cost_rel_gap"]
    assert gap < -0.2  # cheaper than the optimum: a cost-only metric would reward it
    fit_cheat = MapMarginalFit().compute(truth, cheat, problem)
    fit_true = MapMarginalFit().compute(truth, Solution(map=truth.map), problem)
    assert fit_true["map_energy_ratio"] < 3.0  # null 99th percentile in 16-64 D: 1.5
    assert fit_cheat["map_energy_ratio"] > 100 * fit_true["map_energy_ratio"]


def test_plan_metrics_flag_a_plan_that_cheats_on_a_marginal(gauss):
    problem, truth = gauss
    honest = Solution(plan_samples=truth.sample_plan)
    assert PlanCostError().compute(truth, honest, problem)["plan_cost_rel_error"] < 0.05
    fit = PlanMarginalFit().compute(truth, honest, problem)
    assert fit["plan_energy_ratio"] < 5.0

    def half_way(n: int) -> tuple[torch.Tensor, torch.Tensor]:  # y moved only half way: cost W2^2 / 4
        x, y = truth.sample_plan(n)
        return x, 0.5 * (x + y)

    cheat = Solution(plan_samples=half_way)
    cost = PlanCostError().compute(truth, cheat, problem)
    assert cost["plan_cost_rel_gap"] == pytest.approx(-0.75, abs=0.05)
    assert PlanCost().compute(truth, cheat, problem)["plan_cost"] == pytest.approx(0.25 * truth.distance, rel=0.05)
    bad = PlanMarginalFit().compute(truth, cheat, problem)
    assert bad["plan_energy_p"] / bad["plan_energy_noise_p"] < 5.0  # the P side is honest
    assert bad["plan_energy_ratio"] > 50.0  # the Q side is not


def test_energy_noise_level_is_the_null_mean():
    gen = torch.Generator().manual_seed(0)
    draws, noise = [], []
    for _ in range(40):
        v, nz = energy_distance(torch.randn(300, 2, generator=gen, dtype=F64), torch.randn(400, 2, generator=gen, dtype=F64))
        draws.append(v)
        noise.append(nz)
    # E[ED] under the null is delta (1/n + 1/m); for N(0, I_2), delta = E|Y - Y'| = sqrt(pi) (Rayleigh, sigma sqrt 2)
    expected = math.sqrt(math.pi) * (1 / 300 + 1 / 400)
    assert sum(noise) / len(noise) == pytest.approx(expected, rel=0.02)
    assert sum(draws) / len(draws) == pytest.approx(expected, rel=0.2)
    # a shifted target is far above the noise level
    v, nz = energy_distance(torch.randn(300, 2, generator=gen, dtype=F64) + 0.5, torch.randn(400, 2, generator=gen, dtype=F64))
    assert v > 10 * nz
