"""Discrete tasks: seeded, cost normalised to max 1, truth = exact LP optimum and plan (cached per instance)."""

from __future__ import annotations

import pytest
import torch

from otbench.api import InvalidInput
from otbench.metrics.lp import marginal_errors, plan_cost
from otbench_plugins.discrete import tasks as dt
from otbench_plugins.discrete.exact_lp import ExactLP

CPU = torch.device("cpu")


CASES = [
    (dt.PointClouds, {"n": 120, "dim": 16}),
    (dt.PointClouds, {"n": 80, "m": 100, "dim": 3, "distribution": "gaussian", "weights": "random", "cost": "euclidean"}),
    (dt.Histograms1D, {"n": 128}),
    (dt.ColorTransfer, {"n": 150}),
    (dt.ColorTransfer, {"mode": "binned", "bins": 6}),
]


@pytest.mark.parametrize("cls,params", CASES)
def test_task_truth_is_the_exact_lp(cls, params):
    task = cls(**params)
    prob, truth = task.build(0, CPU, torch.float64)
    c = prob.cost_matrix
    n, m = c.shape
    assert prob.kind == "discrete" and task.primary_metric == ("lp_gap", "min")
    # cost normalised to max 1 and consistent with the (rescaled) points and the named cost
    assert abs(float(c.max()) - 1.0) < 1e-12 and float(c.min()) >= 0
    torch.testing.assert_close(prob.ground_cost(prob.x, prob.y), c)
    assert abs(float(prob.a.sum()) - 1) < 1e-12 and abs(float(prob.b.sum()) - 1) < 1e-12
    assert (prob.a > 0).all() and (prob.b > 0).all()
    # the truth plan is feasible, attains OPT, and is a vertex (at most n + m - 1 non-zeros)
    ea, eb = marginal_errors(truth.plan, prob.a, prob.b)
    assert ea < 1e-12 and eb < 1e-12
    assert abs(plan_cost(truth.plan, c) - truth.distance) < 1e-12
    assert int((truth.plan > 0).sum()) <= n + m - 1
    # the exact solver agrees, and a perturbed feasible plan costs more
    sol = ExactLP().solve(prob)
    assert abs(sol.distance - truth.distance) < 1e-10
    indep = torch.outer(prob.a, prob.b)
    assert plan_cost(indep, c) > truth.distance


def test_seeded_and_float32_problem_on_same_truth():
    t = dt.PointClouds(n=60, dim=4, weights="random")
    p1, tr1 = t.build(3, CPU, torch.float64)
    p2, tr2 = t.build(3, CPU, torch.float32)
    p3, tr3 = t.build(4, CPU, torch.float64)
    assert tr1.distance == tr2.distance and tr1.distance != tr3.distance
    assert p2.cost_matrix.dtype == torch.float32 and p2.a.dtype == torch.float32
    torch.testing.assert_close(p2.cost_matrix.double(), p1.cost_matrix, rtol=1e-6, atol=1e-7)
    assert tr2.extra["cost_matrix"].dtype == torch.float64


def test_truth_cache_computes_once_per_instance():
    dt.clear_truth_cache()
    t = dt.PointClouds(n=50, dim=2)
    t.build(0, CPU, torch.float64)
    t.build(0, CPU, torch.float32)
    dt.PointClouds(n=50, dim=2).build(0, CPU, torch.float64)
    assert dt.truth_cache_stats()["misses"] == 1 and dt.truth_cache_stats()["hits"] == 2
    dt.PointClouds(n=50, dim=3).build(0, CPU, torch.float64)
    t.build(1, CPU, torch.float64)
    assert dt.truth_cache_stats()["misses"] == 3


def test_histogram_truth_matches_closed_form_1d():
    import ot

    prob, truth = dt.Histograms1D(n=200, components=3).build(5, CPU, torch.float64)
    grid = prob.x[:, 0].numpy()
    w2 = ot.wasserstein_1d(grid, grid, prob.a.numpy(), prob.b.numpy(), p=2)  # quantile formula, = W2^2
    assert abs(float(w2) - truth.distance) < 1e-9 * max(1.0, truth.distance)


def test_color_transfer_uses_shipped_images():
    prob, _ = dt.ColorTransfer(mode="binned", bins=4).build(0, CPU, torch.float64)
    assert prob.dim == 3 and 8 <= prob.cost_matrix.shape[0] <= 64
    prob2, _ = dt.ColorTransfer(n=64, source="chelsea", target="coffee").build(1, CPU, torch.float64)
    assert prob2.cost_matrix.shape == (64, 64)


@pytest.mark.parametrize("cls,params", [
    (dt.PointClouds, {"n": 1}), (dt.PointClouds, {"distribution": "cauchy"}), (dt.PointClouds, {"weights": "zipf"}),
    (dt.PointClouds, {"cost": "cosine"}), (dt.Histograms1D, {"floor": 1.5}), (dt.ColorTransfer, {"mode": "hsv"}),
    (dt.ColorTransfer, {"source": "no_such_image"}), (dt.ColorTransfer, {"n": 10**7}),
])
def test_bad_task_parameters(cls, params):
    with pytest.raises(InvalidInput):
        cls(**params).build(0, CPU, torch.float64)


def test_unknown_parameter_is_rejected():
    with pytest.raises(InvalidInput, match="unknown"):
        dt.PointClouds(size=10)


def test_conformance_kit_on_tasks():
    from otbench.testing import check_task

    check_task(dt.PointClouds, params={"n": 40, "dim": 2})
    check_task(dt.Histograms1D, params={"n": 40})


# ---------------------------------------------------------------------------------------------------------------
# The truth is not circular: an LP solver independent of POT agrees with it.


def _highs_ot(a, b, c) -> float:
    """The balanced OT LP solved by scipy's HiGHS (dual simplex / IPM), independent of POT's network simplex."""
    import numpy as np
    from scipy.optimize import linprog

    n, m = c.shape
    rows = np.kron(np.eye(n), np.ones((1, m)))   # sum_j P_ij = a_i
    cols = np.kron(np.ones((1, n)), np.eye(m))   # sum_i P_ij = b_j
    res = linprog(c.reshape(-1), A_eq=np.vstack([rows, cols]), b_eq=np.concatenate([a, b]), bounds=(0, None),
                  method="highs")
    assert res.status == 0, res.message
    return float(res.fun)


@pytest.mark.parametrize("cls,params", [
    (dt.PointClouds, {"n": 14, "m": 11, "dim": 3, "weights": "random", "cost": "euclidean"}),
    (dt.PointClouds, {"n": 12, "dim": 2, "distribution": "gaussian"}),
    (dt.Histograms1D, {"n": 16}),
])
def test_truth_and_exact_lp_agree_with_an_independent_lp(cls, params):
    # Wrong implementation caught: both the task truth and exact_lp come from exact_emd, so a wrong exact_emd
    # (e.g. a north-west-corner vertex: feasible, <= n + m - 1 non-zeros, cheaper than the product plan, cost
    # consistent with its plan) passes every self-consistency check above. HiGHS is a separate LP code.
    prob, truth = cls(**params).build(2, CPU, torch.float64)
    opt = _highs_ot(prob.a.numpy(), prob.b.numpy(), prob.cost_matrix.numpy())
    assert abs(truth.distance - opt) < 1e-9
    assert abs(ExactLP().solve(prob).distance - opt) < 1e-9


def test_exact_lp_stopping_early_raises():
    # Wrong implementation caught: POT only *warns* when the simplex hits its iteration cap and hands back a
    # feasible, non-optimal plan; a solver that passed that on would report a wrong distance as exact.
    from otbench.api import SolverDidNotConverge

    prob, truth = dt.PointClouds(n=40, m=50, dim=2, weights="random").build(0, CPU, torch.float64)
    with pytest.raises(SolverDidNotConverge, match="before optimality"):
        ExactLP(max_iter=5).solve(prob)
    # and on a continuous problem too (the sampled LP)
    from otbench_plugins.w1.closed_form import GaussianShift

    cont, _ = GaussianShift(dim=2).build(0, CPU, torch.float64)
    with pytest.raises(SolverDidNotConverge):
        ExactLP(n_samples=64, max_iter=5).solve(cont)
    assert abs(ExactLP(max_iter=10**6).solve(prob).distance - truth.distance) < 1e-12  # a large cap is fine
