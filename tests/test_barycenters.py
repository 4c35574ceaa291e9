"""Barycenters on a grid: the location-scale truth, IPOT (seed 004 Alg. 2) against POT, and the W2 metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from otbench import Solution
from otbench.costs import pairwise_cost
from otbench.metrics.barycenter import BarycenterW2
from otbench.testing import check_solver, check_task
from otbench_plugins.discrete.barycenters import (IPOTBarycenter, LocationScaleBarycenter, POTBarycenter,
                                                  POTConvolutionalBarycenter, ipot_barycenter)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small() -> tuple:
    task = LocationScaleBarycenter(grid=16, n_measures=4, template="gaussian", width=0.4, shift=0.1)
    return task.build(0, CPU, torch.float64)


def _objective(q: torch.Tensor, problem) -> float:
    """sum_k w_k W2^2(q, p_k) by exact LP: what a barycenter minimises."""
    import ot

    cost = pairwise_cost(problem.x, problem.x, "sqeuclidean").numpy()
    qn = (q / q.sum()).numpy()
    return sum(float(w) * float(ot.emd2(qn, p.numpy(), cost)) for w, p in zip(problem.measure_weights, problem.measures))


def test_truth_beats_every_other_candidate(small):
    # The mean-scale, mean-centre member minimises sum_k w_k W2^2; a truth built as the pixel average, or with
    # the wrong scale (e.g. the mean of 1/s), scores worse than it here.
    problem, truth = small
    best = _objective(truth.barycenter, problem)
    assert best < _objective(problem.measures.mean(0), problem)
    for p in problem.measures:
        assert best < _objective(p, problem)
    wrong_scale = LocationScaleBarycenter(grid=16, n_measures=4, template="gaussian", width=0.4 * 1.3, shift=0.1)
    off, off_truth = wrong_scale.build(0, CPU, torch.float64)
    assert best < _objective(off_truth.barycenter, problem)


def test_one_ipot_step_with_converged_inner_loop_is_the_entropic_barycenter(small):
    # After one proximal step from Gamma = 1 1^T, IPOT's inner loop is exactly iterative Bregman projection at
    # eps = beta: it must equal POT's ot.bregman.barycenter (independent code). Wrong update order, a missing
    # weight exponent or a transposed plan all break this equality.
    import ot

    problem, _ = small
    cost = problem.cost_matrix
    q, _, _ = ipot_barycenter(problem.measures, problem.measure_weights, cost, beta=0.02, inner_iters=3000, max_iter=1)
    ref = ot.bregman.barycenter(problem.measures.T.numpy(), cost.numpy(), 0.02, problem.measure_weights.numpy(),
                                numItermax=5000, stopThr=1e-12)
    assert np.abs(q.numpy() - ref / ref.sum()).sum() < 1e-6


def test_ipot_is_sharper_and_closer_than_the_entropic_barycenter_at_the_same_regularisation(small):
    problem, truth = small
    metric = BarycenterW2()
    ipot = metric.compute(truth, IPOTBarycenter(beta=0.01, max_iter=60).solve(problem), problem)
    bregman = metric.compute(truth, POTBarycenter(epsilon=0.01, method="sinkhorn").solve(problem), problem)
    assert ipot["entropy_excess"] < bregman["entropy_excess"] - 0.1
    assert ipot["barycenter_w2"] < bregman["barycenter_w2"]
    assert ipot["barycenter_w2_px"] < 1.0  # within a pixel of the truth on a 16 x 16 grid


def test_metric_is_zero_on_the_truth_and_the_shift_on_a_shifted_copy(small):
    problem, truth = small
    metric = BarycenterW2()
    assert metric.compute(truth, Solution(barycenter=truth.barycenter), problem)["barycenter_w2"] < 1e-6
    side = problem.grid_shape[0]
    shifted = truth.barycenter.reshape(side, side).roll(2, dims=1).reshape(-1)  # mass far from the border
    w2 = metric.compute(truth, Solution(barycenter=shifted), problem)["barycenter_w2"]
    assert math.isclose(w2, 2 / side, rel_tol=0.05)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="template must be"):
        LocationScaleBarycenter(template="banana").build(0, CPU, torch.float64)
    with pytest.raises(ValueError, match="must be <= 0.5"):
        LocationScaleBarycenter(width=0.9, scale_range=(1.0, 1.5)).build(0, CPU, torch.float64)
    with pytest.raises(ValueError, match="beta must be a positive number"):
        IPOTBarycenter(beta=-1).solve(LocationScaleBarycenter(grid=8, template="gaussian", width=0.4).build(0, CPU, torch.float64)[0])


def test_conformance():
    check_task(LocationScaleBarycenter, {"grid": 12, "n_measures": 3, "template": "digit3"})
    check_solver(IPOTBarycenter, {"max_iter": 10})
    check_solver(POTBarycenter, {"epsilon": 0.01, "method": "sinkhorn"})
    check_solver(POTConvolutionalBarycenter, {"epsilon": 0.01})
