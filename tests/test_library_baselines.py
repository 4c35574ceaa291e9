"""POT and geomloss as leaderboard rows: checked against independent solvers, not against themselves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from otbench.api import SolverDidNotConverge
from otbench.testing import check_solver
from otbench_plugins.discrete.entropic import sinkhorn_solve
from otbench_plugins.discrete.library_baselines import GeomlossSinkhorn, POTSinkhorn
from otbench_plugins.discrete.tasks import PointClouds
from otbench_plugins.w1.closed_form import GaussianShift

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def clouds() -> tuple:
    return PointClouds(n=200, dim=4, cost="sqeuclidean").build(0, CPU, torch.float64)


def test_pot_sinkhorn_agrees_with_our_sinkhorn_and_the_lp(clouds):
    # Two independent implementations of the same entropic problem must give the same plan; a wrong epsilon
    # convention, a transposed plan or a dropped weight vector would not.
    problem, truth = clouds
    sol = POTSinkhorn(epsilon=0.01, tol=1e-9, max_iter=5000).solve(problem)
    ours = sinkhorn_solve(problem.a, problem.b, problem.cost_matrix, 0.01, method="log", max_iter=5000, tol=1e-9)
    assert torch.allclose(sol.plan, ours.plan, atol=1e-7)
    assert sol.info["converged"] == 1.0
    # entropic bias bound: 0 <= <C, P_eps> - OPT <= eps * log(n m)
    assert 0 <= sol.distance - truth.distance <= 0.01 * math.log(200 * 200)


def test_pot_sinkhorn_rejects_bad_parameters(clouds):
    problem, _ = clouds
    with pytest.raises(ValueError, match="method must be one of"):
        POTSinkhorn(method="sinkhorn_fast").solve(problem)
    with pytest.raises(ValueError, match="epsilon must be a positive"):
        POTSinkhorn(epsilon=0).solve(problem)


def test_pot_sinkhorn_tau_is_passed_and_checked(clouds):
    # a tau that did not reach POT would leave its default 1e3 absorptions; with a huge tau the stabilised method is
    # plain Sinkhorn and agrees with our log-domain solver (and the mass it returned is recorded as it came back)
    problem, _ = clouds
    sol = POTSinkhorn(method="sinkhorn_stabilized", epsilon=0.01, tol=1e-9, max_iter=5000, tau=1e8).solve(problem)
    ours = sinkhorn_solve(problem.a, problem.b, problem.cost_matrix, 0.01, method="log", max_iter=5000, tol=1e-9)
    assert torch.allclose(sol.plan, ours.plan, atol=1e-7)
    assert sol.info["returned_mass"] == pytest.approx(float(sol.plan.sum()), rel=1e-12)
    with pytest.raises(ValueError, match="tau applies to"):
        POTSinkhorn(method="sinkhorn", tau=1e8).solve(problem)
    with pytest.raises(ValueError, match="tau must be"):
        POTSinkhorn(method="sinkhorn_stabilized", tau=0.5).solve(problem)


def test_pot_sinkhorn_never_scores_a_nan_plan(clouds, monkeypatch):
    # POT's stabilised method can return an all-NaN matrix (a kernel column that underflows entirely); zeroing the
    # NaNs (as np.nan_to_num would) turns it into the independent coupling after rounding, a plausible-looking score
    import ot

    problem, _ = clouds
    monkeypatch.setattr(ot, "sinkhorn", lambda a, b, M, reg, **kw: (np.full(M.shape, np.nan), {"err": [1.0]}))
    with pytest.raises(SolverDidNotConverge, match="non-finite"):
        POTSinkhorn(method="sinkhorn_stabilized", epsilon=1e-4).solve(problem)


def test_geomloss_plan_is_near_optimal_and_near_feasible(clouds):
    # geomloss stops when its epsilon schedule ends, so its marginals are met only approximately (a few %);
    # a wrong cost convention (its p=2 cost is |x-y|^2/2) would put the plan's mass far off 1 and its cost far
    # from the LP optimum.
    problem, truth = clouds
    sol = GeomlossSinkhorn(blur=0.02).solve(problem)
    assert abs(float(sol.plan.sum()) - 1.0) < 0.05
    assert float((sol.plan.sum(1) - problem.a).abs().sum()) < 0.15
    assert abs(sol.distance - truth.distance) / truth.distance < 0.1


def test_geomloss_critic_estimates_w1_with_the_right_gradient():
    # W1 between N(0, I) and N(m, I) is |m| and the optimal critic's gradient is -m/|m| everywhere (critics
    # maximise E_P f - E_Q f): a sign error or a critic that is not extended off the samples fails here.
    problem, truth = GaussianShift(dim=2, shift=2.0).build(0, CPU, torch.float32)
    sol = GeomlossSinkhorn(blur=0.02, n_samples=1024).solve(problem)
    x, y = truth.sample_p(2000), truth.sample_q(2000)
    estimate = float(sol.critic(x).mean() - sol.critic(y).mean())
    assert abs(estimate - truth.distance) / truth.distance < 0.06
    assert abs(sol.distance - truth.distance) / truth.distance < 0.06
    pts = x[:256].clone().requires_grad_(True)
    grad = torch.autograd.grad(sol.critic(pts).sum(), pts)[0]
    cos = torch.nn.functional.cosine_similarity(grad, truth.critic_grad(x[:256]), dim=1)
    assert float(cos.mean()) > 0.95


def test_geomloss_refuses_a_bare_cost_matrix(clouds):
    problem, _ = clouds
    problem.x = None
    assert "point clouds" in GeomlossSinkhorn().supports(problem)


@pytest.mark.parametrize("cls,params", [(POTSinkhorn, {"epsilon": 0.05}), (GeomlossSinkhorn, {"n_samples": 64})])
def test_conformance(cls, params):
    check_solver(cls, params)
