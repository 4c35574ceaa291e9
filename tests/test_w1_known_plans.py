"""The known-plan W1 pairs: certificates, Monte Carlo truth, published parameter files, seeding."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from otbench.api import InvalidInput
from otbench.testing import check_task
from otbench_plugins.w1 import known_plans as w1k
from otbench_plugins.w1.known_plans import (CertificateError, MaxMinNet, MaxMinNetPair, MinFunnel, MinFunnelPair,
                                           truth_stats)

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT.parent / "shared" / "w1bench" / "pairs"
CPU = torch.device("cpu")

needs_published = pytest.mark.skipif(
    not PAIRS.is_dir(), reason=f"published W1 pairs not found at {PAIRS} (../shared/w1bench/pairs from the repo root)")

GENERATED = [
    (MinFunnelPair, {"dim": 2, "funnels": 4}),
    (MinFunnelPair, {"dim": 16, "funnels": 64}),
    (MaxMinNetPair, {"dim": 2, "groups": 4, "group_size": 4}),
    (MaxMinNetPair, {"dim": 32, "groups": 8, "group_size": 8}),
]


def _plan_certificate(task, truth, n: int = 4096) -> None:
    """Plan pairs as handed out (float32) satisfy u(y) - u(x) = |x - y|; the true gradient is a unit vector and
    agrees with autograd of the potential at x."""
    pot = task.potential(CPU)
    x, y = truth.sample_plan(n)
    assert x.dtype == torch.float32 and x.shape == y.shape == (n, pot.dim)
    x64, y64 = x.double(), y.double()
    residual = pot.value(y64) - pot.value(x64) - (x64 - y64).norm(dim=1)
    assert residual.abs().max() < 1e-5
    g = truth.critic_grad(x).double()
    assert (g.norm(dim=1) - 1).abs().max() < 1e-5
    xa = x64[:512].clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(pot.autograd_value(xa).sum(), xa)
    assert torch.allclose(-auto, g[:512], atol=1e-5)
    # the plan moves x towards y along the negative critic gradient: (x - y)/|x - y| = grad f*(x)
    d = x64 - y64
    moved = d.norm(dim=1) > 1e-3
    cos = (d[moved] / d[moved].norm(dim=1, keepdim=True) * g[moved]).sum(1)
    assert cos.min() > 1 - 1e-4


@pytest.mark.parametrize("cls,params", GENERATED, ids=lambda v: str(v) if isinstance(v, dict) else v.name)
def test_generated_pairs_pass_certificate(cls, params):
    task = cls(**params, truth_samples=8192)
    problem, truth = task.build(0, CPU, torch.float32)
    assert truth.extra["certificate_residual"] < 1e-9 and truth.extra["certificate_grad_dev"] < 1e-9
    _plan_certificate(task, truth)
    # Lemma 3.5: energy distance <= W1 <= mean pairwise distance (within Monte Carlo error)
    w1, se = truth.distance, truth.distance_se
    assert truth.extra["w1_lower_energy"] <= w1 + 3 * (se + truth.extra["w1_lower_energy_se"])
    assert w1 <= truth.extra["w1_upper_mean_distance"] + 3 * (se + truth.extra["w1_upper_mean_distance_se"])
    assert problem.sample_p(16).dtype == torch.float32 and problem.cost == "euclidean"


def test_monte_carlo_w1_matches_dual_value_generated():
    """E|x - y| over plan pairs agrees with E_P f* - E_Q f* on independent, unpaired samples (f* = -u)."""
    task = MaxMinNetPair(dim=8, groups=4, group_size=8, truth_samples=32768)
    _, truth = task.build(3, CPU, torch.float64)
    pot = task.potential(CPU)
    up, uq = pot.value(truth.sample_p(32768)), pot.value(truth.sample_q(32768))
    dual = float(uq.mean() - up.mean())
    dual_se = math.sqrt(float(up.var() + uq.var()) / 32768)
    assert abs(dual - truth.distance) < 3 * math.hypot(dual_se, truth.distance_se)


def test_tampered_ray_fails_certificate():
    """Starting rays before the point where u stops being linear must be caught: a failing pair is an error.
    (Only the start matters: x always lies between the start and y, so a too-long end cannot break the plan.)"""

    class StartsTooEarly(MaxMinNet):
        def segments(self, y):
            uy, w, back, ahead, low = super().segments(y)
            back = back * 3 + 0.5
            return uy, w, back, ahead, y - back[:, None] * w

    base = MaxMinNetPair(dim=4, groups=4, group_size=4)._make_potential()
    bad = StartsTooEarly(base.weights.reshape(4, 4, 4), base.offsets.reshape(4, 4), base.box, base.power)
    with pytest.raises(CertificateError, match="certificate failed"):
        truth_stats(bad, 4096, seed=0, device=CPU, rho=1e-9)
    truth_stats(base, 4096, seed=0, device=CPU, rho=1e-9)  # the honest construction passes

    class WrongCentre(MinFunnel):
        def segments(self, y):
            uy, v, back, ahead, low = super().segments(y)
            return uy, v, back, ahead, low.roll(1, 0)

    funnel = MinFunnelPair(dim=4, funnels=16)._make_potential()
    with pytest.raises(CertificateError, match="certificate failed"):
        truth_stats(WrongCentre(funnel.centres, funnel.offsets, funnel.box, funnel.power), 4096, 0, CPU, 1e-9)


def test_seeds_reproduce_pairs_exactly():
    a = MinFunnelPair(dim=8, funnels=16, pair_seed=5)._make_potential()
    b = MinFunnelPair(dim=8, funnels=16, pair_seed=5)._make_potential()
    c = MinFunnelPair(dim=8, funnels=16, pair_seed=6)._make_potential()
    assert torch.equal(a.centres, b.centres) and torch.equal(a.offsets, b.offsets)
    assert not torch.equal(a.centres, c.centres)
    m1 = MaxMinNetPair(dim=8, pair_seed=5)._make_potential()
    m2 = MaxMinNetPair(dim=8, pair_seed=5)._make_potential()
    assert torch.equal(m1.weights, m2.weights) and torch.equal(m1.offsets, m2.offsets)
    # truth belongs to the pair (not the run seed) and is recomputed identically without the cache
    task = MinFunnelPair(dim=8, funnels=16, pair_seed=5, truth_samples=4096)
    _, t1 = task.build(0, CPU, torch.float32)
    _, t2 = task.build(1, CPU, torch.float32)
    w1k._CACHE.clear()
    p3, t3 = task.build(0, CPU, torch.float32)
    assert t1.distance == t2.distance == t3.distance
    p4, _ = task.build(0, CPU, torch.float32)
    assert torch.equal(p3.sample_p(64), p4.sample_p(64)) and torch.equal(p3.sample_q(64), p4.sample_q(64))


@pytest.mark.parametrize("cls,params", [GENERATED[0], GENERATED[2]], ids=["min_funnel", "maxmin_net"])
def test_task_contract(cls, params):
    check_task(cls, {**params, "truth_samples": 4096})


def test_invalid_parameters():
    with pytest.raises(InvalidInput, match="funnels"):
        MinFunnelPair(funnels=0).build(0, CPU, torch.float32)
    with pytest.raises(InvalidInput, match="does not exist"):
        MinFunnelPair(pairs_file="/nonexistent/dim_{dim}.pt").build(0, CPU, torch.float32)
    with pytest.raises(InvalidInput, match="unknown parameter"):
        MinFunnelPair(width=3)


@needs_published
def test_published_pairs_file_shape_is_checked():
    with pytest.raises(InvalidInput, match="funnels=16"):
        MinFunnelPair(dim=2, funnels=16, pairs_file=str(PAIRS / "dim_2_width_4.pt")).build(0, CPU, torch.float32)


@needs_published
@pytest.mark.parametrize("dim,funnels", [(2, 4), (16, 64), (128, 16)])
def test_published_pairs_certificate_and_w1(dim, funnels):
    """The published MinFunnel parameters pass the certificate; the plan-pair Monte Carlo W1 agrees with the
    dual value E_P f* - E_Q f* estimated on independent samples within 3 combined standard errors."""
    task = MinFunnelPair(dim=dim, funnels=funnels, truth_samples=32768,
                         pairs_file=str(PAIRS / "dim_{dim}_width_{funnels}.pt"))
    pot = task.potential(CPU)
    state = torch.load(PAIRS / f"dim_{dim}_width_{funnels}.pt", weights_only=True)
    assert torch.equal(pot.centres, state["net.centers"].double())
    _, truth = task.build(0, CPU, torch.float32)
    assert truth.extra["certificate_residual"] < 1e-9
    _plan_certificate(task, truth, n=2048)
    n = 32768
    up, uq = pot.value(truth.sample_p(n).double()), pot.value(truth.sample_q(n).double())
    dual = float(uq.mean() - up.mean())
    dual_se = math.sqrt(float(up.var() + uq.var()) / n)
    assert abs(dual - truth.distance) < 3 * math.hypot(dual_se, truth.distance_se), (dual, truth.distance)
