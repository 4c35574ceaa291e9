"""Neural W1 solvers on the benchmark's own non-linear pairs, scored against the best LINEAR critic there.

gaussian_shift has a linear optimal critic, so a critic with its activations removed (or a GroupSort that sorts
nothing) passes every accuracy test on it. On radial_scaling (optimal critic -sign(c - 1)|x|) and min_funnel
(-min_n |x - a_n| - b_n) the optimal gradient field g* is unit-norm but not constant, and the best any
constant field c can do is computed here in closed form from samples of g*:

    max_c mean cos(c, g*) = |mean g*|        min_c mean |c - g*|^2 = 1 - |mean g*|^2

(the first at c parallel to mean g*, the second at c = mean g*). A linear critic cannot beat these bounds.
Runs are short (a few hundred steps on 2-D cells, one thread).
"""

from __future__ import annotations

import torch

from otbench.registry import get_registry
from otbench.runner import execute_run
from otbench.suite import load_suite, plan_runs, validate_suite
from otbench_plugins.w1 import critics as C
from otbench_plugins.w1.closed_form import RadialScaling
from otbench_plugins.w1.known_plans import MinFunnelPair
from otbench_plugins.w1.maximin import MMB
from otbench.metrics.w1 import W1Gradient

from conftest import write_suite

CPU = torch.device("cpu")
SMALL = {"width": 64, "batch_size": 256, "eval_samples": 4096, "trace_every": 100}


def linear_bounds(truth, n: int = 8192) -> tuple[float, float]:
    """``(best cos, best L2)`` that any constant gradient field (a linear critic) reaches on this pair."""
    g = truth.critic_grad(truth.sample_p(n)).double()
    assert torch.allclose(g.norm(dim=1), torch.ones(n, dtype=torch.float64), atol=1e-6)  # unit field: formulas hold
    mean = g.mean(0)
    return float(mean.norm()), float(1 - mean.square().sum())


def test_groupsort_so_beats_every_linear_critic_on_radial_scaling():
    # Wrong implementation caught: GroupSort as the identity (the SO critic is then a product of orthonormal
    # matrices: linear). Measured: cos 0.998 after 200 steps; linear bound 0.004 (symmetry: 0 in expectation).
    problem, truth = RadialScaling(dim=2, factor=2.0).build(0, CPU, torch.float32)
    best_cos, _ = linear_bounds(truth)
    sol = C.GroupSortSO(iterations=200, lr=5e-3, **{**SMALL, "width": 32}).solve(problem)
    out = W1Gradient().compute(truth, sol, problem)
    assert out["grad_cos"] > best_cos + 0.8, (out, best_cos)


def test_maximin_beats_every_linear_critic_on_min_funnel():
    # Wrong implementation caught: maximin nets without activations (the critic is then linear). Measured:
    # MM:B cos 0.745 after 150 steps; linear bound 0.064 on this pair (4 funnels in 2-D).
    problem, truth = MinFunnelPair(dim=2, funnels=4).build(0, CPU, torch.float32)
    best_cos, _ = linear_bounds(truth)
    sol = MMB(iterations=150, lr=2e-3, **SMALL).solve(problem)
    out = W1Gradient().compute(truth, sol, problem)
    assert out["grad_cos"] > best_cos + 0.5, (out, best_cos)


def test_grad_l2_end_to_end_through_the_runner(tmp_path):
    # The flagship metric, from a suite file through plan_runs and execute_run into the record: a WGAN-GP critic
    # on radial_scaling. Wrong implementations caught: a critic MLP with its activations removed (L2 >= the
    # linear bound ~1), and a runner or metric that loses, renames or mis-scores grad_l2. Measured: grad_l2 0.016,
    # grad_cos 0.997 after 200 steps.
    registry = get_registry()
    path = write_suite(tmp_path / "s.yaml", """
name: strength_w1
seeds: [0]
timeout: 600
metrics: [w1_gradient, w1_critic_lipschitz]
tasks: [{name: radial_scaling, params: {dim: 2, factor: 2.0}}]
solvers:
  - {name: wgan_gp, params: {iterations: 200, lr: 5.0e-3, width: 64, batch_size: 256, eval_samples: 4096,
     trace_every: 100}}
""")
    suite = load_suite(path)
    validate_suite(suite, registry, path)
    (spec,) = plan_runs(suite, registry, "cpu")
    record = execute_run(spec, registry)
    assert record["status"] == "ok", record.get("error")
    metrics = record["metrics"]
    _, task_truth = RadialScaling(dim=2, factor=2.0).build(0, CPU, torch.float32)
    best_cos, best_l2 = linear_bounds(task_truth)
    assert best_l2 > 0.99
    assert metrics["grad_l2"] < 0.2 and metrics["grad_l2"] < best_l2 - 0.7, metrics
    assert metrics["grad_cos"] > best_cos + 0.9, metrics
    # the penalty lets the slope exceed 1 a little, never by much
    assert 0.9 < metrics["grad_norm_mean"] < 1.3, metrics
