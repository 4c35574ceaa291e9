"""W1 metrics: exact values for the true critic and for simple wrong critics, maps and plan samples."""

from __future__ import annotations

import pytest
import torch

from otbench.api import Solution
from otbench.metrics.w1 import METRICS, W1Bounds, W1CriticHonesty, W1Gradient, W1TransportGradient
from otbench_plugins.w1.closed_form import RadialScaling
from otbench_plugins.discrete.exact_lp import ExactLP
from otbench_plugins.w1.known_plans import MinFunnelPair

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def funnel():
    task = MinFunnelPair(dim=4, funnels=16, truth_samples=16384)
    problem, truth = task.build(0, CPU, torch.float32)
    pot = task.potential(CPU)

    def f_star(x: torch.Tensor) -> torch.Tensor:  # the optimal critic -u, differentiable
        return -pot.autograd_value(x.double()).to(x.dtype)

    return task, problem, truth, f_star


def _all(problem, truth, solution) -> dict[str, float]:
    out: dict[str, float] = {}
    for cls in METRICS:
        metric = cls()
        if metric.applies(problem, truth, solution) is None:
            out.update(metric.compute(truth, solution, problem))
    return out


def test_true_critic_is_perfect(funnel):
    _, problem, truth, f_star = funnel
    out = _all(problem, truth, Solution(critic=f_star))
    assert out["grad_cos"] > 1 - 1e-6 and out["grad_l2"] < 1e-10
    assert abs(out["grad_norm_max"] - 1) < 1e-6 and out["lip_violation_share"] == 0.0
    assert abs(out["slackness_gap"]) < 1e-5 and out["slackness_gap_abs"] < 1e-5
    # the dual estimate is unbiased: within 3 combined standard errors of the true W1
    assert abs(out["w1_estimate"] - truth.distance) < 3 * (out["w1_estimate_se"] + truth.distance_se)
    assert out["w1_true"] == truth.distance
    assert out["w1_lower_energy"] < out["w1_true"] < out["w1_upper_mean_distance"]


@pytest.mark.parametrize("zero", [lambda x: torch.zeros(x.shape[0]), lambda x: 0.0 * x.sum(1)],
                         ids=["no_graph", "with_graph"])
def test_zero_critic(funnel, zero):
    _, problem, truth, _ = funnel
    out = W1Gradient().compute(truth, Solution(critic=zero), problem)
    assert out["grad_l2"] == pytest.approx(1.0, abs=1e-6) and out["grad_cos"] == 0.0
    assert out["w1_rel_error_pct"] == pytest.approx(100.0)


def test_negated_and_steep_critics(funnel):
    _, problem, truth, f_star = funnel
    neg = W1Gradient().compute(truth, Solution(critic=lambda x: -f_star(x)), problem)
    assert neg["grad_cos"] == pytest.approx(-1.0, abs=1e-6) and neg["grad_l2"] == pytest.approx(4.0, abs=1e-5)
    steep = W1CriticHonesty().compute(truth, Solution(critic=lambda x: 2 * f_star(x)), problem)
    assert steep["grad_norm_max"] == pytest.approx(2.0, abs=1e-5) and steep["lip_violation_share"] == 1.0
    # f = 2 f* overshoots every plan pair by |x - y|: the gap is -W1 (negative: not 1-Lipschitz)
    assert steep["slackness_gap"] == pytest.approx(-truth.distance, rel=0.05)
    assert steep["slackness_gap_abs"] == pytest.approx(truth.distance, rel=0.05)


def test_true_plan_and_map_directions_are_perfect(funnel):
    _, problem, truth, _ = funnel
    out = W1TransportGradient().compute(truth, Solution(plan_samples=truth.sample_plan), problem)
    assert out["transport_grad_cos"] > 0.995 and out["transport_grad_l2"] < 0.01  # (x == y pairs score 0)
    task = RadialScaling(dim=3, factor=0.5)
    p, t = task.build(0, CPU, torch.float32)
    out = _all(p, t, Solution(map=t.map))
    assert out["grad_cos"] == pytest.approx(1.0, abs=1e-6) and out["transport_grad_l2"] < 1e-10
    assert out["w1_rel_error_pct"] < 3.0  # transport cost of the true map on 4096 draws


def test_exact_lp_gets_gradient_metrics_from_matched_pairs(funnel):
    """The discrete baseline's matched pairs give a direction at each matched x: in 4-D it beats a zero critic
    (measured: cos 0.59, L2 0.8 with 512 samples) but is far from exact."""
    _, problem, truth, _ = funnel
    solution = ExactLP(n_samples=512).solve(problem)
    out = _all(problem, truth, solution)
    assert {"grad_cos", "grad_l2", "transport_grad_cos", "w1_rel_error_pct", "w1_true"} <= set(out)
    assert 0.3 < out["grad_cos"] < 0.95 and 0.1 < out["grad_l2"] < 1.0
    assert out["w1_estimate"] == solution.distance
    assert W1CriticHonesty().applies(problem, truth, solution) is not None


def test_metrics_skip_other_costs_and_registered():
    p, t = RadialScaling(dim=2, cost="sqeuclidean").build(0, CPU, torch.float32)
    assert W1Gradient().applies(p, t, Solution(map=t.map)) is not None
    p, t = RadialScaling(dim=2).build(0, CPU, torch.float32)
    assert W1Bounds().applies(p, t, Solution(distance=1.0)) is not None  # no Lemma 3.5 bounds in this truth
    from otbench.metrics import core_metrics

    assert {W1Gradient, W1TransportGradient, W1CriticHonesty, W1Bounds} <= set(core_metrics())


def test_finite_difference_gradient_path_on_a_nonzero_critic(funnel):
    # A critic whose output carries no autograd graph (e.g. a numpy model) is differentiated by central finite
    # differences. A zero critic scores the same under any formula; the true critic -u without a graph must
    # score as with autograd. Wrong implementations caught: a flipped difference (cos -1), a divisor h instead
    # of 2h (|g| = 2: L2 ~ 1), the step put on the wrong coordinate (cos ~ 0).
    _, problem, truth, f_star = funnel
    out = W1Gradient().compute(truth, Solution(critic=lambda x: f_star(x).detach()), problem)
    # P's points crowd the funnel tips (x = low + t^8 (up - low)), where the gradient jumps: points within the
    # float32 step h ~ 0.012 of a tip get an averaged difference (measured: cos 0.9997, L2 0.047)
    assert out["grad_cos"] > 0.995 and out["grad_l2"] < 0.1
    # and on a smooth, anisotropic critic against its analytic gradient (float32 inputs, float64 differences)
    from otbench.metrics.w1 import critic_value_and_grad

    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
    weights = torch.tensor([1.0, -2.0, 0.5])

    def smooth(z: torch.Tensor) -> torch.Tensor:
        return (torch.sin(z) * weights).sum(1).detach()

    _, g = critic_value_and_grad(smooth, x)
    torch.testing.assert_close(g, (torch.cos(x.double()) * weights.double()), rtol=0, atol=2e-3)
