"""OT generators (OT-GAN, Sinkhorn / IPOT minimum-Kantorovich generators, SPOT generator): contract, the OT-GAN
loss and its log-domain Sinkhorn, short training runs on 2-D targets, IPOT's certified plan, seed 004's shrinkage."""

from __future__ import annotations

import math

import ot
import pytest
import torch
from torch.nn import functional as F

from otbench.api import InvalidInput
from otbench.registry import get_registry
from otbench.testing import check_solver, toy_problem
from otbench_plugins.discrete.entropic import ipot_solve
from otbench_plugins.generative.ot_generators import (
    OT_GENERATORS,
    OTGAN,
    IPOTGenerator,
    SinkhornGenerator,
    SPOTGenerator,
    entropic_cost,
    minibatch_energy_distance,
    sinkhorn_log,
    train_cost,
)

TINY = {
    OTGAN: {"iterations": 6, "batch_size": 16, "sinkhorn_iters": 10, "width": 16, "feature_dim": 8},
    SinkhornGenerator: {"iterations": 3, "batch_size": 16, "width": 16, "ot_iters": 20},
    IPOTGenerator: {"iterations": 3, "batch_size": 16, "width": 16, "ot_iters": 20},
    SPOTGenerator: {"iterations": 3, "batch_size": 16, "gen_width": 8, "critic_hidden": 8, "n_critic": 2},
}
# the 2-D runs below: toy_problem("generative") is N(0, I_2) -> modes +-(1, 1) with std 0.3
SMALL_NET = {"width": 64, "depth": 2, "lr": 1e-3, "batch_size": 100}


def _uniform(n: int) -> torch.Tensor:
    return torch.full((n,), 1.0 / n, dtype=torch.float64)


def _w1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact W1 between two equal-weight point clouds (POT's network simplex)."""
    cost = torch.cdist(a.double(), b.double())
    return float(ot.emd2(_uniform(len(a)), _uniform(len(b)), cost, numItermax=10**6))


def _w1_to_data(sol, problem, n: int = 400) -> float:
    return _w1(sol.generator(n), problem.sample_q(n))


@pytest.mark.parametrize("cls", OT_GENERATORS, ids=lambda c: c.name)
def test_contract_and_image_range(cls):
    # a wrong implementation: an unseeded net or latent, a generator that repeats its draws, outputs off [0, 1]
    check_solver(cls, params=TINY[cls])
    assert get_registry().solver(cls.name).cls is cls
    problem = toy_problem("generative", image=True)
    for arch in ("mlp", "conv"):
        out = cls(**TINY[cls], arch=arch).solve(problem).generator(9)
        assert out.shape == (9, 256) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0


# --------------------------------------------------------------------------------------------------- OT-GAN
def test_log_sinkhorn_matches_pot_and_batches():
    # a wrong implementation: a missing log-weight, eps applied twice, rows/columns swapped (non-square case)
    g = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(12, 5, generator=g, dtype=torch.float64), dim=1)
    v = F.normalize(torch.randn(15, 5, generator=g, dtype=torch.float64), dim=1)
    cost = 1.0 - u @ v.T
    for eps in (0.5, 0.05, 0.01):
        ours = float(entropic_cost(cost, eps, 3000))
        ref = float(ot.sinkhorn2(_uniform(12), _uniform(15), cost, eps, method="sinkhorn_log", numItermax=30000,
                                 stopThr=1e-13))
        assert ours == pytest.approx(ref, abs=1e-9), eps
    plan = sinkhorn_log(cost, 0.05, 3000)
    assert torch.allclose(plan.sum(0), _uniform(15), atol=1e-12)
    assert torch.allclose(plan.sum(1), _uniform(12), atol=1e-9)
    # the batched form (OT-GAN's six W in one pass) gives each matrix's own plan
    batch = torch.stack([cost, cost.flip(0), 2 * cost])
    each = torch.stack([entropic_cost(c, 0.05, 200) for c in batch])
    assert torch.allclose(entropic_cost(batch, 0.05, 200), each, atol=1e-12)


def _features(points: torch.Tensor) -> torch.Tensor:
    """A fixed, non-trivial feature map R^2 -> S^7 (a stand-in for a trained critic)."""
    g = torch.Generator().manual_seed(7)
    w1, w2 = torch.randn(2, 16, generator=g, dtype=torch.float64), torch.randn(16, 8, generator=g, dtype=torch.float64)
    return F.normalize(torch.tanh(points @ w1) @ w2, dim=-1)


def test_energy_distance_vanishes_for_the_data_distribution_and_not_for_a_shift():
    # a wrong implementation: -W(X,X') or -W(Y,Y') weighted 1 instead of 2, a term missing, a sign flipped; those
    # leave a non-zero mean (or zero gradient) when Y, Y' come from the data
    g = torch.Generator().manual_seed(0)
    half, draws, eps, iters = 16, 128, 0.1, 30  # the identity E L = 0 holds for any W, converged or not

    def data(n):
        return torch.randn(n, 2, generator=g, dtype=torch.float64) * 0.5 + torch.tensor([1.0, 0.0], dtype=torch.float64)

    def mean_loss_and_grad(shift: float) -> tuple[float, float, float, float]:
        s = torch.full((draws,), shift, dtype=torch.float64, requires_grad=True)
        x, x2, y, y2 = (data(draws * half).reshape(draws, half, 2) for _ in range(4))
        offset = torch.stack([torch.zeros_like(s), s], dim=-1)[:, None, :]  # shift along e_2, one per draw
        loss, _ = minibatch_energy_distance(_features(x), _features(x2), _features(y + offset),
                                            _features(y2 + offset), eps, iters)
        (grad,) = torch.autograd.grad(loss.sum(), s)
        loss = loss.detach()
        return (float(loss.mean()), float(loss.std() / math.sqrt(draws)), float(grad.mean()),
                float(grad.std() / math.sqrt(draws)))

    # measured: -0.022 +- 0.011 (same), 0.63 +- 0.016 (shifted); gradients -0.03 +- 0.07 and 0.63 +- 0.03
    same, same_se, same_grad, grad_se = mean_loss_and_grad(0.0)
    shifted, _, shifted_grad, _ = mean_loss_and_grad(1.0)
    assert abs(same) < 4 * same_se
    assert shifted > 20 * same_se
    # E L(s) is minimal at s = 0: the mean gradient vanishes there and pushes a shifted batch back
    assert abs(same_grad) < 4 * grad_se < shifted_grad


def test_ot_gan_generator_descends_the_energy_distance():
    # with the critic never updated (gen_per_critic beyond the run) the generator alone minimises the loss on fixed
    # features; a wrong implementation (generator ascending, the plan's gradient cut from the generated batch)
    # leaves it at its start. Measured: 0.47 at update 10, -0.05..0.13 over the last 40 updates
    sol = OTGAN(iterations=120, batch_size=32, sinkhorn_iters=20, epsilon=0.05, width=32, feature_dim=16, lr=1e-3,
                gen_per_critic=10**6, trace_every=10).solve(toy_problem("generative"))
    losses = [t["loss"] for t in sol.trace]
    assert sol.info["critic_steps"] == 0
    assert sum(losses[-4:]) / 4 < 0.3 * losses[0]


def test_ot_gan_update_schedule_and_validation():
    # a wrong implementation: critic updated at every step (1:1), or generator:critic swapped
    sol = OTGAN(**{**TINY[OTGAN], "iterations": 10, "gen_per_critic": 4}).solve(toy_problem("generative"))
    assert sol.info["critic_steps"] == 2 and sol.info["generator_steps"] == 8
    assert [t["iteration"] for t in OTGAN(**{**TINY[OTGAN], "trace_every": 2}).solve(toy_problem("generative")).trace] \
        == [2, 4, 6]
    problem = toy_problem("generative")
    for bad, match in (({"batch_size": 17}, "batch_size"), ({"epsilon": 0.0}, "epsilon"),
                       ({"sinkhorn_grad": "implicit"}, "sinkhorn_grad"), ({"gen_per_critic": 0}, "gen_per_critic"),
                       ({"arch": "conv"}, "arch"), ({"betas": (0.5,)}, "betas")):
        with pytest.raises(InvalidInput, match=match):
            OTGAN(**{**TINY[OTGAN], **bad}).solve(problem)


# ---------------------------------------------------------------------------------------- Sinkhorn / IPOT
@pytest.mark.parametrize("cls, params", [(SinkhornGenerator, {"epsilon": 0.1}), (IPOTGenerator, {"beta": 0.1,
                                                                                                 "ot_iters": 50})],
                         ids=["sinkhorn", "ipot"])
def test_plan_generators_learn_a_2d_target(cls, params):
    # a wrong implementation: the plan transposed or detached with the cost (no gradient), the loss ascended, the
    # data batch mixed with the generated one; all leave W1 near the untrained generator's
    problem = toy_problem("generative")
    untrained_solver = cls(**{**SMALL_NET, **params, "iterations": 1, "lr": 1e-12})
    untrained = _w1_to_data(untrained_solver.solve(toy_problem("generative")), toy_problem("generative"))
    sol = cls(**SMALL_NET, **params, iterations=250).solve(problem)
    trained = _w1_to_data(sol, problem)
    # measured: untrained 1.39, trained 0.21 (Sinkhorn), 0.19 (IPOT); the data's own two-sample W1 at n = 400: 0.09
    assert trained < 0.3 * untrained
    assert len(sol.trace) == 250 // 50 and {"iteration", "time", "loss"} <= set(sol.trace[0])


def test_ipot_generator_uses_the_certified_ipot_plan():
    # a wrong implementation: a Sinkhorn (blurred) plan or an unconverged IPOT plan passed off as IPOT's
    g = torch.Generator().manual_seed(3)
    y, x = torch.randn(30, 2, generator=g), torch.randn(30, 2, generator=g) + 1.0
    cost = train_cost(y, x, "euclidean").double()
    solver = IPOTGenerator(beta=0.1, ot_iters=3000, tol=1e-4, normalize_cost=True)
    res = solver._plan_of(cost, normalize=True)
    direct = ipot_solve(_uniform(30), _uniform(30), cost / cost.max(), beta=0.1, max_iter=3000, tol=1e-4, trace=False)
    assert res.converged and torch.equal(res.plan, direct.plan)
    lp = float(ot.emd2(_uniform(30), _uniform(30), cost))
    assert float((res.plan * cost).sum()) == pytest.approx(lp, rel=2e-4)
    # in training: every step's plan certified, the gap recorded in the trace
    sol = IPOTGenerator(iterations=4, batch_size=30, width=16, beta=0.1, ot_iters=3000, tol=1e-4, normalize_cost=True,
                        trace_every=1).solve(toy_problem("generative"))
    assert sol.info["plan_converged_fraction"] == 1.0
    assert all(0 <= t["certified_gap"] <= 1e-4 for t in sol.trace)


def test_envelope_gradient_is_the_gradient_of_the_ot_cost():
    # a wrong implementation: a loss whose gradient is not the OT cost's (e.g. the plan's rows normalised to 1,
    # or the cost and plan misaligned); checked against a finite difference of the exact LP value
    g = torch.Generator().manual_seed(5)
    y = torch.randn(12, 2, generator=g, dtype=torch.float64).requires_grad_()
    x = torch.randn(12, 2, generator=g, dtype=torch.float64) + 0.5
    cost = train_cost(y, x, "sqeuclidean")
    plan = IPOTGenerator(beta=0.1, ot_iters=5000, normalize_cost=True)._plan_of(cost, normalize=True).plan
    (plan * cost).sum().backward()
    direction = torch.randn(12, 2, generator=g, dtype=torch.float64)
    h = 1e-6

    def lp(points):
        return float(ot.emd2(_uniform(12), _uniform(12), torch.cdist(points, x).square()))

    fd = (lp(y.detach() + h * direction) - lp(y.detach() - h * direction)) / (2 * h)
    assert float((y.grad * direction).sum()) == pytest.approx(fd, rel=1e-4)


def test_sinkhorn_generator_shrinks_at_large_epsilon_ipot_does_not():
    # seed 004, section 2.4.3: a large epsilon blurs the Sinkhorn plan towards a b^T, whose loss is minimised by
    # collapsing onto the data mean; IPOT at the same beta converges to the LP plan and keeps the spread.
    # A wrong implementation: IPOT running as one Sinkhorn step at beta (it would collapse too)
    problem_kwargs = {**SMALL_NET, "iterations": 150}
    spread = {}
    for name, sol in (("sinkhorn", SinkhornGenerator(**problem_kwargs, epsilon=5.0)),
                      ("ipot", IPOTGenerator(**problem_kwargs, beta=5.0, ot_iters=100))):
        out = sol.solve(toy_problem("generative")).generator(500)
        spread[name] = float(out.std(0).mean())
    data = float(toy_problem("generative").sample_q(500).std(0).mean())
    # measured (ot_iters 200): data 1.02, Sinkhorn 0.49, IPOT 1.00
    assert spread["sinkhorn"] < 0.6 * data and spread["ipot"] > 0.85 * data


def test_plan_generator_validation():
    problem = toy_problem("generative")
    for cls, bad, match in ((SinkhornGenerator, {"epsilon": -1.0}, "epsilon"),
                            (SinkhornGenerator, {"sinkhorn_method": "fast"}, "sinkhorn_method"),
                            (IPOTGenerator, {"beta": 0}, "beta"), (IPOTGenerator, {"inner_iters": 0}, "inner_iters"),
                            (IPOTGenerator, {"batch_size": 1}, "batch_size"),
                            (SinkhornGenerator, {"normalize_cost": "yes"}, "normalize_cost"),
                            (SinkhornGenerator, {"iterations": 2.5}, "iterations")):
        with pytest.raises(InvalidInput, match=match):
            cls(**{**TINY[cls], **bad}).solve(problem)


# ---------------------------------------------------------------------------------------------------- SPOT
def test_spot_generator_learns_and_its_transport_term_acts():
    # a wrong implementation: the critic term with the wrong sign (W1 grows), or the transport term ignored (then
    # G(z) is no closer to z than the marginal-only game's)
    problem = toy_problem("generative")
    common = {"iterations": 200, "batch_size": 64, "gen_width": 32, "critic_hidden": 32, "critic_layers": 1,
              "n_critic": 2, "lr": 1e-3, "lr_critic": 3e-3}
    untrained = _w1_to_data(SPOTGenerator(**{**common, "iterations": 1, "lr": 1e-12}).solve(toy_problem("generative")),
                            toy_problem("generative"))
    runs = {}
    for weight in (0.0, 1.0):
        problem = toy_problem("generative")
        sol = SPOTGenerator(**common, transport_weight=weight).solve(problem)
        runs[weight] = (_w1_to_data(sol, problem), sol.trace[-1]["transport"])
    # measured: W1 1.42 (untrained) -> 0.66 (weight 0), 0.52 (weight 1); E|z - G(z)| 1.41 (weight 0), 0.69 (1)
    assert runs[1.0][0] < 0.6 * untrained and runs[0.0][0] < 0.6 * untrained
    assert runs[1.0][1] < 0.7 * runs[0.0][1]
    with pytest.raises(InvalidInput, match="transport_weight"):
        SPOTGenerator(**TINY[SPOTGenerator], transport_weight=1.0).solve(toy_problem("generative", image=True))
    with pytest.raises(InvalidInput, match="lipschitz"):
        SPOTGenerator(**TINY[SPOTGenerator], lipschitz="gp").solve(problem)
