"""LP metrics: gap of the returned and of the rounded plan, marginal violation, sparsity, time to accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from otbench import Problem, Solution, Truth
from otbench.metrics import core_metrics
from otbench.metrics.lp import (LPGap, MarginalViolation, PlanSparsity, TimeToAccuracy, c_transform_dual,
                                effective_support, first_time_below, round_to_polytope, time_to_accuracy_curve)
from otbench_plugins.discrete.exact_lp import exact_emd

CPU = torch.device("cpu")


def instance(n: int = 30, m: int = 40, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 2, generator=g, dtype=torch.float64), torch.rand(m, 2, generator=g, dtype=torch.float64)
    c = torch.cdist(x, y).square()
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.2
    b = torch.rand(m, generator=g, dtype=torch.float64) + 0.2
    a, b = a / a.sum(), b / b.sum()
    plan, opt = exact_emd(a.numpy(), b.numpy(), c.numpy())
    prob = Problem(kind="discrete", dim=2, cost="sqeuclidean", device=CPU, dtype=torch.float64, a=a, b=b, x=x, y=y,
                   cost_matrix=c)
    truth = Truth(distance=opt, plan=torch.as_tensor(plan), extra={"cost_matrix": c})
    return prob, truth


def test_registered_as_core_metrics():
    names = {cls.name for cls in core_metrics()}
    assert {"lp_gap", "marginal_violation", "plan_sparsity", "time_to_accuracy"} <= names


def test_exact_plan_has_zero_gap_and_violation():
    prob, truth = instance()
    sol = Solution(plan=truth.plan, distance=truth.distance)
    gap = LPGap().compute(truth, sol, prob)
    assert abs(gap["lp_gap"]) < 1e-12 and abs(gap["lp_gap_raw"]) < 1e-12
    mv = MarginalViolation().compute(truth, sol, prob)
    assert mv["marginal_violation"] < 1e-12 and mv["negative_mass"] == 0
    sp = PlanSparsity().compute(truth, sol, prob)
    assert sp["plan_nnz_ratio"] <= 1.0 and sp["plan_nnz"] >= max(prob.a.numel(), prob.b.numel())


def test_independent_plan_gap_and_density():
    prob, truth = instance()
    indep = torch.outer(prob.a, prob.b)
    sol = Solution(plan=indep)
    gap = LPGap().compute(truth, sol, prob)
    expected = (float((indep * prob.cost_matrix).sum()) - truth.distance) / truth.distance
    assert gap["lp_gap"] == pytest.approx(expected, rel=1e-12) and gap["lp_gap"] > 0.5
    sp = PlanSparsity().compute(truth, sol, prob)
    assert sp["plan_nnz"] == 30 * 40 and sp["plan_eff_support_ratio"] > 10


def test_infeasible_plan_cannot_beat_opt_after_rounding():
    prob, truth = instance()
    shrunk = truth.plan * 0.9  # 10% of the mass missing: raw cost below OPT
    sol = Solution(plan=shrunk)
    gap = LPGap().compute(truth, sol, prob)
    assert gap["lp_gap_raw"] < -0.05
    assert gap["lp_gap"] >= -1e-12
    mv = MarginalViolation().compute(truth, sol, prob)
    assert mv["marginal_violation"] == pytest.approx(0.2, rel=1e-9) and mv["mass_error"] == pytest.approx(0.1)


def test_rounding_is_feasible_and_identity_on_feasible_plans():
    prob, truth = instance(seed=1)
    g = torch.Generator().manual_seed(5)
    noisy = truth.plan + 1e-3 * torch.rand(truth.plan.shape, generator=g, dtype=torch.float64)
    r = round_to_polytope(noisy, prob.a, prob.b)
    assert (r >= 0).all()
    torch.testing.assert_close(r.sum(1), prob.a, atol=1e-14, rtol=0)
    torch.testing.assert_close(r.sum(0), prob.b, atol=1e-14, rtol=0)
    # AWR Lemma 7: |R(P) - P|_1 <= 2 (|P1 - a|_1 + |P^T 1 - b|_1)
    err = float((noisy.sum(1) - prob.a).abs().sum() + (noisy.sum(0) - prob.b).abs().sum())
    assert float((r - noisy).abs().sum()) <= 2 * err + 1e-12
    torch.testing.assert_close(round_to_polytope(truth.plan, prob.a, prob.b), truth.plan)


def test_c_transform_dual_is_a_lower_bound_and_tight_at_optimal_potentials():
    import ot

    prob, truth = instance(seed=2)
    a, b, c = prob.a, prob.b, prob.cost_matrix
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        assert c_transform_dual(c, torch.randn(a.numel(), generator=g, dtype=torch.float64), a, b) <= truth.distance + 1e-12
    _, log = ot.emd(a.numpy(), b.numpy(), c.numpy(), log=True)
    tight = c_transform_dual(c, torch.as_tensor(log["u"]), a, b)
    assert tight == pytest.approx(truth.distance, rel=1e-10)


def test_time_to_accuracy_from_trace():
    prob, truth = instance()
    opt = truth.distance
    trace = [{"iteration": 10, "time": 0.1, "value_feasible": opt * 1.5},
             {"iteration": 20, "time": 0.2, "value_feasible": opt * 1.005},
             {"iteration": 30, "time": 0.3, "value_feasible": opt * 1.0005},
             {"iteration": 40, "time": 0.4, "value_feasible": opt * 1.0002}]
    sol = Solution(plan=truth.plan, trace=trace)
    out = TimeToAccuracy().compute(truth, sol, prob)
    assert out["time_to_gap_1e-02"] == 0.2 and out["iters_to_gap_1e-02"] == 20
    assert out["time_to_gap_1e-03"] == 0.3
    assert math.isinf(out["time_to_gap_1e-04"])  # never reached: a biased solver shows as such
    assert out["trace_final_gap"] == pytest.approx(2e-4)
    curve = time_to_accuracy_curve(trace, opt)
    assert [round(gp, 6) for _, _, gp in curve] == [0.5, 0.005, 0.0005, 0.0002]
    assert first_time_below(curve, 0.01) == (0.2, 20.0)
    # a trace without values: the metric does not apply
    assert TimeToAccuracy().applies(prob, truth, Solution(plan=truth.plan, trace=[{"iteration": 1, "time": 0.0}]))


def test_metrics_on_a_real_solver_run():
    from otbench_plugins.discrete.tasks import PointClouds
    from otbench_plugins.discrete.entropic import Sinkhorn

    prob, truth = PointClouds(n=60, dim=4).build(0, CPU, torch.float32)
    sol = Sinkhorn(epsilon=0.05).solve(prob)
    gap = LPGap().compute(truth, sol, prob)
    assert gap["lp_gap"] > 1e-3  # entropic bias at a large epsilon
    out = TimeToAccuracy().compute(truth, sol, prob)
    assert out["trace_final_gap"] == pytest.approx(gap["lp_gap"], rel=1e-3, abs=1e-6)
    assert effective_support(sol.plan) > 60
