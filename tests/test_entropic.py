"""Sinkhorn (kernel / stabilised / log) and IPOT: agreement with POT, convergence to the LP optimum, float32
behaviour at small regularisation, and clear errors on bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from otbench import Problem
from otbench.api import InvalidInput, SolverDidNotConverge, UnsupportedProblem
from otbench.metrics.lp import effective_support
from otbench_plugins.discrete.entropic import IPOT, Sinkhorn, ipot_solve, sinkhorn_solve
from otbench_plugins.discrete.exact_lp import exact_emd

CPU = torch.device("cpu")


def cloud(n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float64, weights: str = "uniform"):
    """Uniform points in [0,1]^d, squared-Euclidean cost normalised to max 1, and the exact LP optimum."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    y = torch.rand(n, d, generator=g, dtype=torch.float64)
    c = torch.cdist(x, y).square()
    c = c / c.max()
    if weights == "uniform":
        a = torch.full((n,), 1.0 / n, dtype=torch.float64)
        b = a.clone()
    else:
        a = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
        b = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
        a, b = a / a.sum(), b / b.sum()
    _, opt = exact_emd(a.numpy(), b.numpy(), c.numpy())
    return a.to(dtype), b.to(dtype), c.to(dtype), opt


def problem_of(a, b, c, **kw) -> Problem:
    return Problem(kind="discrete", dim=1, cost="matrix", device=CPU, dtype=c.dtype, a=a, b=b, cost_matrix=c, **kw)


def test_kernel_sinkhorn_matches_pot_iterate_for_iterate():
    import ot

    a, b, c, _ = cloud(120, 5, seed=1, weights="random")
    for eps in (0.1, 0.02):
        ours = sinkhorn_solve(a, b, c, eps, method="kernel", max_iter=150, tol=0.0, trace=False)
        pot = ot.sinkhorn(a.numpy(), b.numpy(), c.numpy(), eps, numItermax=150, stopThr=0.0, warn=False)
        np.testing.assert_allclose(ours.plan.numpy(), pot, rtol=1e-9, atol=1e-14)


def test_stabilized_and_log_sinkhorn_match_pot_at_convergence():
    import ot

    a, b, c, _ = cloud(100, 4, seed=2, weights="random")
    pot = ot.sinkhorn(a.numpy(), b.numpy(), c.numpy(), 0.02, numItermax=20000, stopThr=1e-13, warn=False)
    for method in ("stabilized", "log"):
        ours = sinkhorn_solve(a, b, c, 0.02, method=method, max_iter=20000, tol=1e-12, trace=False)
        assert ours.converged
        np.testing.assert_allclose(ours.plan.numpy(), pot, rtol=1e-6, atol=1e-12)
    # without the epsilon ramp the stabilised iterates are the kernel iterates (absorption is exact)
    st = sinkhorn_solve(a, b, c, 0.02, method="stabilized", eps_scaling=0, tau=10.0, max_iter=200, tol=0.0,
                        trace=False)
    ke = sinkhorn_solve(a, b, c, 0.02, method="kernel", max_iter=200, tol=0.0, trace=False)
    assert st.info["absorptions"] > 0
    np.testing.assert_allclose(st.plan.numpy(), ke.plan.numpy(), rtol=1e-8, atol=1e-14)


def test_kernel_underflows_but_stabilized_works_at_eps_1e3_float32():
    a, b, c, opt = cloud(200, 8, seed=3, dtype=torch.float32)
    with pytest.raises(SolverDidNotConverge, match="stabilized"):
        sinkhorn_solve(a, b, c, 1e-3, method="kernel", max_iter=200)
    res = sinkhorn_solve(a, b, c, 1e-3, method="stabilized", max_iter=10000, tol=1e-5)
    plan = res.plan.double()
    assert torch.isfinite(plan).all() and (plan >= 0).all()
    assert abs(float(plan.sum()) - 1.0) < 1e-5
    err = float((plan.sum(1) - a.double()).abs().sum() + (plan.sum(0) - b.double()).abs().sum())
    assert err < 2e-5 and res.converged
    # a small-epsilon entropic plan is close to, and above, the LP optimum
    assert 0 <= (res.value - opt) / opt < 5e-3
    # and it is the float64 entropic plan, not a float32 artefact
    ref = sinkhorn_solve(a.double(), b.double(), c.double(), 1e-3, method="log", max_iter=res.iterations,
                         tol=1e-5, trace=False)
    assert float((plan - ref.plan).abs().sum()) < 1e-3


def test_ipot_gap_falls_to_1e3_on_500_points_16d():
    a, b, c, opt = cloud(500, 16, seed=0)
    res = ipot_solve(a, b, c)  # default budget
    gaps = [(p["iteration"], (p["value_feasible"] - opt) / opt) for p in res.trace]
    assert gaps[-1][1] <= 1e-3
    assert abs(res.value - opt) / opt <= 1e-3
    # the gap falls as iterations grow: each trace point is below the one ~4 checkpoints before
    values = [g for _, g in gaps]
    assert values[0] > 1e-2
    assert all(values[i + 4] < values[i] for i in range(len(values) - 4) if values[i] > 1e-6)
    # the certificate it stops on really brackets OPT
    last = res.trace[-1]
    assert last["dual_bound"] <= opt + 1e-12 <= last["value_feasible"] + 2e-12


def test_ipot_reaches_lp_not_entropic_optimum_in_float32_where_kernel_sinkhorn_underflows():
    a, b, c, opt = cloud(200, 8, seed=4, dtype=torch.float32)
    # kernel Sinkhorn dies at eps = 1e-3 in float32 ...
    with pytest.raises(SolverDidNotConverge):
        sinkhorn_solve(a, b, c, 1e-3, method="kernel", max_iter=100)
    # ... IPOT runs 1000+ steps, i.e. an effective regularisation beta / t <= 1e-4, and lands on the LP optimum
    res = ipot_solve(a, b, c, beta=0.1, max_iter=3000)
    assert res.iterations >= 1000 or res.converged
    assert torch.isfinite(res.plan).all()
    assert abs(res.value - opt) / opt < 1e-4
    # while converged Sinkhorn at eps = 1e-2 stays visibly biased
    biased = sinkhorn_solve(a, b, c, 1e-2, method="stabilized", max_iter=2000)
    assert (biased.value - opt) / opt > 1e-2


def test_ipot_inner_iterations_and_plan_sparsity():
    a, b, c, opt = cloud(150, 3, seed=5)
    one = ipot_solve(a, b, c, beta=0.1, inner_iters=1, max_iter=1500)
    three = ipot_solve(a, b, c, beta=0.1, inner_iters=3, max_iter=1500)
    for res in (one, three):
        assert abs(res.value - opt) / opt < 1e-3
        # converged IPOT is nearly sparse (the LP plan here is a permutation: effective support n) ...
        assert effective_support(res.plan) < 1.2 * 150
        assert float(res.plan.max(1).values.sum()) > 0.9
    # ... where an entropic plan is diffuse
    assert effective_support(sinkhorn_solve(a, b, c, 1e-2).plan) > 3 * 150


def test_solvers_through_the_interface_and_zero_weights():
    a, b, c, _ = cloud(40, 2, seed=6, weights="random")
    a = a.clone()
    a[3] = 0.0
    a = a / a.sum()
    b = b * a.sum() / b.sum()
    for solver in (Sinkhorn(epsilon=0.05), Sinkhorn(epsilon=0.05, method="kernel"), Sinkhorn(epsilon=0.05, method="log"),
                   IPOT(max_iter=500)):
        sol = solver.solve(problem_of(a, b, c, seed=0))
        assert sol.plan.shape == (40, 40) and sol.iterations > 0
        assert float(sol.plan[3].abs().sum()) == 0.0
        assert abs(sol.distance - float((sol.plan * c).sum())) < 1e-10
        assert sol.trace and {"iteration", "time", "value", "value_feasible", "marginal_error"} <= set(sol.trace[-1])


def test_point_cloud_input_with_named_cost():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(30, 2, generator=g, dtype=torch.float64), torch.rand(25, 2, generator=g, dtype=torch.float64)
    prob = Problem(kind="discrete", dim=2, cost="euclidean", device=CPU, dtype=torch.float64, x=x, y=y)
    sol = Sinkhorn(epsilon=0.01, tol=1e-9, max_iter=5000).solve(prob)
    np.testing.assert_allclose(sol.plan.sum(1).numpy(), np.full(30, 1 / 30), atol=1e-8)
    np.testing.assert_allclose(sol.plan.sum(0).numpy(), np.full(25, 1 / 25), atol=1e-8)


@pytest.mark.parametrize("solver", [Sinkhorn(), IPOT()])
def test_bad_inputs_give_clear_errors(solver):
    a, b, c, _ = cloud(10, 2, seed=7)
    bad_a = a.clone()
    bad_a[0] = -0.1
    with pytest.raises(InvalidInput, match="negative"):
        solver.solve(problem_of(bad_a, b, c))
    nan_b = b.clone()
    nan_b[1] = float("nan")
    with pytest.raises(InvalidInput, match="NaN"):
        solver.solve(problem_of(a, nan_b, c))
    with pytest.raises(InvalidInput, match="equal total masses"):
        solver.solve(problem_of(a, 2 * b, c))
    nan_c = c.clone()
    nan_c[2, 3] = float("nan")
    with pytest.raises(InvalidInput, match="cost_matrix"):
        solver.solve(problem_of(a, b, nan_c))
    with pytest.raises(InvalidInput, match="shape"):
        solver.solve(problem_of(a, b, c[:, :7]))
    cont = Problem(kind="continuous", dim=2, cost="euclidean", device=CPU, dtype=torch.float64,
                   sample_p=lambda n: torch.zeros(n, 2), sample_q=lambda n: torch.zeros(n, 2))
    with pytest.raises(UnsupportedProblem):
        solver.solve(cont)


def test_bad_hyperparameters():
    a, b, c, _ = cloud(10, 2, seed=8)
    with pytest.raises(InvalidInput, match="method"):
        Sinkhorn(method="magic").solve(problem_of(a, b, c))
    with pytest.raises(InvalidInput, match="epsilon"):
        Sinkhorn(epsilon=0.0).solve(problem_of(a, b, c))
    with pytest.raises(InvalidInput, match="beta"):
        IPOT(beta=-1.0).solve(problem_of(a, b, c))
    with pytest.raises(SolverDidNotConverge):
        Sinkhorn(epsilon=1e-3, max_iter=3, strict=True).solve(problem_of(a, b, c))


def test_conformance_kit():
    from otbench.testing import check_solver

    for dtype in (torch.float32, torch.float64):
        check_solver(Sinkhorn, params={"epsilon": 0.05, "max_iter": 300}, dtype=dtype)
        check_solver(IPOT, params={"max_iter": 300}, dtype=dtype)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float32_matches_cpu():
    a, b, c, opt = cloud(300, 8, seed=9, dtype=torch.float32)
    dev = torch.device("cuda")
    for fn, kw in ((sinkhorn_solve, {"epsilon": 1e-3, "max_iter": 3000}), (ipot_solve, {"max_iter": 2000})):
        cpu = fn(a, b, c, **kw)
        gpu = fn(a.to(dev), b.to(dev), c.to(dev), **kw)
        assert gpu.plan.device.type == "cuda"
        assert abs(gpu.value - cpu.value) / opt < 1e-4


def _rectangular(n: int, m: int, d: int, seed: int):
    """Random positive weights on n != m points: a code that mixes up a and b, or rows and columns, breaks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    y = torch.rand(m, d, generator=g, dtype=torch.float64) + 0.3
    c = torch.cdist(x, y).square()
    c = c / c.max()
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(m, generator=g, dtype=torch.float64) + 0.1
    return a / a.sum(), b / b.sum(), c


@pytest.mark.parametrize("n,m", [(70, 110), (110, 45)])
def test_sinkhorn_matches_pot_when_n_differs_from_m(n, m):
    # Wrong implementation caught: with n == m and uniform weights, swapping a and b, using K instead of K^T,
    # or normalising along the wrong axis can still match POT; here every such slip changes the plan or fails.
    import ot

    a, b, c = _rectangular(n, m, 3, seed=n)
    ours = sinkhorn_solve(a, b, c, 0.05, method="kernel", max_iter=120, tol=0.0, trace=False)
    pot = ot.sinkhorn(a.numpy(), b.numpy(), c.numpy(), 0.05, numItermax=120, stopThr=0.0, warn=False)
    assert ours.plan.shape == (n, m)
    np.testing.assert_allclose(ours.plan.numpy(), pot, rtol=1e-9, atol=1e-14)
    conv = ot.sinkhorn(a.numpy(), b.numpy(), c.numpy(), 0.02, numItermax=20000, stopThr=1e-13, warn=False)
    for method in ("stabilized", "log"):
        res = sinkhorn_solve(a, b, c, 0.02, method=method, max_iter=20000, tol=1e-12, trace=False)
        assert res.converged
        np.testing.assert_allclose(res.plan.numpy(), conv, rtol=1e-6, atol=1e-12)
    # the solver class on a rectangular problem: marginals are a (rows) and b (columns)
    sol = Sinkhorn(epsilon=0.02, max_iter=20000).solve(problem_of(a, b, c))
    torch.testing.assert_close(sol.plan.sum(1), a, rtol=0, atol=1e-8)
    torch.testing.assert_close(sol.plan.sum(0), b, rtol=0, atol=1e-8)
