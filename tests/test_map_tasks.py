"""Known-map tasks: closed-form Gaussian W2, convex-potential maps (certificate), the SPOT toy pairs."""

from __future__ import annotations

import math

import pytest
import torch

from otbench.api import InvalidInput
from otbench.registry import get_registry
from otbench.testing import check_task
from otbench_plugins.maps.tasks import ConvexMap, GaussianW2, SpotCurved, SpotGaussians, gaussian_w2_squared

CPU = torch.device("cpu")
F64 = torch.float64


def _mc_close(values: torch.Tensor, target: float, n_se: float = 4.0) -> bool:
    return abs(float(values.mean()) - target) < n_se * float(values.std()) / math.sqrt(values.numel())


@pytest.mark.parametrize("dim", [2, 5])
def test_gaussian_map_pushes_p_onto_q(dim):
    problem, truth = GaussianW2(dim=dim, instance=3).build(0, CPU, F64)
    e = truth.extra
    a = e["map_matrix"]
    # exact algebra: A symmetric positive definite with A S_p A = S_q (so T*#P = Q exactly)
    assert torch.allclose(a, a.T, atol=1e-12)
    assert float(torch.linalg.eigvalsh(a).min()) > 0
    assert torch.allclose(a @ e["cov_p"] @ a, e["cov_q"], atol=1e-10)
    # and on samples: mean and covariance of T*(x) match Q's within Monte Carlo error
    n = 200_000
    x = truth.sample_p(n)
    y = truth.map(x)
    se = math.sqrt(2.0 / n) * float(torch.linalg.eigvalsh(e["cov_q"]).max())
    assert torch.allclose(torch.cov(y.T).reshape(dim, dim), e["cov_q"], atol=6 * se)
    assert torch.allclose(y.mean(0), e["mean_q"], atol=6 * math.sqrt(float(e["cov_q"].diagonal().max()) / n))
    # the closed-form distance is the Monte Carlo cost of the map
    assert _mc_close((x - y).square().sum(1), truth.distance)
    assert truth.extra["var_q"] == pytest.approx(float(e["cov_q"].trace()))
    assert problem.cost == "sqeuclidean" and truth.distance_se == 0.0


def test_gaussian_w2_matches_diagonal_formula_and_explicit_params():
    mp, mq = [0.0, 1.0, -1.0], [2.0, 0.0, 0.5]
    vp, vq = [1.0, 4.0, 0.25], [9.0, 1.0, 0.25]
    _, truth = GaussianW2(dim=3, mean_p=mp, cov_p=vp, mean_q=mq, cov_q=vq).build(0, CPU, F64)
    expected = sum((a - b) ** 2 for a, b in zip(mp, mq)) + sum((math.sqrt(a) - math.sqrt(b)) ** 2 for a, b in zip(vp, vq))
    assert truth.distance == pytest.approx(expected, abs=1e-12)
    assert torch.allclose(truth.extra["map_matrix"], torch.diag(torch.tensor([3.0, 0.5, 1.0], dtype=F64)), atol=1e-12)
    # Bures distance is symmetric and zero on identical inputs
    cov = GaussianW2(dim=4).parameters()[1]
    m = torch.zeros(4, dtype=F64)
    assert gaussian_w2_squared(m, cov, m, cov) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(InvalidInput, match="cov_p"):
        GaussianW2(dim=2, cov_p=[[1.0, 2.0], [2.0, 1.0]]).build(0, CPU, F64)  # not positive definite
    with pytest.raises(InvalidInput, match="mean_q"):
        GaussianW2(dim=2, mean_q=[1.0, 2.0, 3.0]).build(0, CPU, F64)


@pytest.mark.parametrize("dim", [2, 16, 64])
def test_convex_map_certificate(dim):
    task = ConvexMap(dim=dim, n_reference=20_000)
    _, truth = task.build(0, CPU, F64)
    psi = truth.extra["potential"]
    lam = truth.extra["strong_convexity"]
    assert lam > 0
    gen = torch.Generator().manual_seed(1)
    x, x2 = 2 * torch.randn(4096, dim, generator=gen, dtype=F64), 2 * torch.randn(4096, dim, generator=gen, dtype=F64)
    # strong monotonicity of grad psi: <g(x) - g(x'), x - x'> >= lambda_min(A) |x - x'|^2 (so strictly monotone)
    inner = ((psi.grad(x) - psi.grad(x2)) * (x - x2)).sum(1)
    assert bool((inner >= lam * (x - x2).square().sum(1) * (1 - 1e-9)).all())
    # grad is the gradient of psi (autograd), and Hess psi >= lambda_min I at probe points
    xr = x[:64].clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(psi(xr).sum(), xr)
    assert torch.allclose(auto, psi.grad(x[:64]), atol=1e-10)
    for point in x[:3]:
        hess = torch.autograd.functional.hessian(lambda v: psi(v[None])[0], point)
        assert float(torch.linalg.eigvalsh(hess).min()) >= lam * (1 - 1e-9)
    # the truth map is grad psi, and the reference W2^2 agrees with an independent evaluation stream
    xe = truth.sample_p(20_000)
    assert torch.allclose(truth.map(xe), psi.grad(xe))
    assert _mc_close((xe - truth.map(xe)).square().sum(1), truth.distance, n_se=5 * math.sqrt(2))
    # the map is not affine: the best affine fit leaves a visible L2-UVP
    assert truth.extra["affine_l2_uvp"] > 1.0


def test_convex_map_instance_fixes_the_potential():
    a = ConvexMap(dim=4, n_reference=2000).potential()
    b = ConvexMap(dim=4, n_reference=2000).potential()
    c = ConvexMap(dim=4, instance=1, n_reference=2000).potential()
    x = torch.randn(10, 4, dtype=F64)
    assert torch.equal(a.grad(x), b.grad(x)) and not torch.allclose(a.grad(x), c.grad(x))
    with pytest.raises(InvalidInput):
        ConvexMap(dim=4, ridge_width=0.0).build(0, CPU, F64)


@pytest.mark.parametrize("cost,expected", [("euclidean", 5.0), ("sqeuclidean", 25.0)])
def test_spot_gaussians_truth(cost, expected):
    problem, truth = SpotGaussians(cost=cost).build(0, CPU, F64)
    assert truth.distance == expected and problem.dim == 2
    x, y = truth.sample_plan(50_000)
    c = (x - y).norm(dim=1) if cost == "euclidean" else (x - y).square().sum(1)
    assert torch.allclose(c, torch.full_like(c, expected))
    assert float(truth.sample_p(50_000)[:, 0].mean()) == pytest.approx(-2.5, abs=0.03)
    assert float(truth.sample_q(50_000)[:, 0].mean()) == pytest.approx(2.5, abs=0.03)
    if cost == "euclidean":  # f(x) = -x1 is 1-Lipschitz and attains E_P f - E_Q f = 5
        assert torch.equal(truth.critic_grad(x), torch.tensor([[-1.0, 0.0]], dtype=F64).expand_as(x))
    else:
        assert truth.critic_grad is None


def test_spot_curved_has_no_distance_truth():
    problem, truth = SpotCurved().build(0, CPU, F64)
    assert truth.distance is None and truth.map is None and truth.sample_plan is None
    y = truth.sample_q(50_000)
    assert float(y[:, 1].min()) >= -3.0 and float(y[:, 1].max()) <= 3.0  # 2 Y1 - 3 with Y1 in [0, 3]
    y1 = (y[:, 1] + 3) / 2
    y2 = y[:, 0] - torch.sin(y1)
    assert float(y2.mean()) == pytest.approx(2.0, abs=0.01) and float(y2.var()) == pytest.approx(0.1, rel=0.03)
    assert float(truth.sample_p(50_000).var(0).mean()) == pytest.approx(0.5, rel=0.03)


@pytest.mark.parametrize("cls,params", [(GaussianW2, {"dim": 3}), (ConvexMap, {"dim": 3, "n_reference": 2000}),
                                        (SpotGaussians, {}), (SpotCurved, {})])
def test_task_conformance_and_registration(cls, params):
    check_task(cls, params)
    assert get_registry().task(cls.name).cls is cls
