"""Barycenter metrics: exact W2 to the true barycenter (LP on the support) and sharpness (entropy)."""

from __future__ import annotations

import math

import numpy as np
import torch

from otbench.api import Metric, Problem, Solution, Truth


def _entropy(q: torch.Tensor) -> float:
    q = q.double().clamp_min(0)
    q = q / q.sum()
    nz = q[q > 0]
    return float(-(nz * nz.log()).sum())


def _w2(p: torch.Tensor, q: torch.Tensor, support: torch.Tensor) -> float:
    """Exact W2 between two histograms on ``support`` (POT's network simplex, float64)."""
    import ot

    from otbench.costs import pairwise_cost

    cost = pairwise_cost(support.double().cpu(), support.double().cpu(), "sqeuclidean").numpy()
    a = np.clip(p.double().cpu().numpy(), 0, None)
    b = np.clip(q.double().cpu().numpy(), 0, None)
    a, b = a / a.sum(), b / b.sum()
    return math.sqrt(max(float(ot.emd2(a, b, cost, numItermax=10_000_000)), 0.0))


class BarycenterW2(Metric):
    """Exact W2 (LP on the support) between the solution's barycenter and the true one; entropy vs the truth's.

    Outputs: ``barycenter_w2`` (in support units; for grids over [0, 1]^2 multiply by the grid side for pixels),
    ``barycenter_w2_px`` (the same in pixels when the problem has a ``grid_shape``), ``barycenter_entropy`` and ``entropy_excess`` (entropy minus the truth's: entropic blur shows as a
    positive excess) and ``barycenter_l1``. Truth needs: ``barycenter``; the support is ``problem.x``.
    """

    name = "barycenter_w2"
    kinds = frozenset({"barycenter"})
    needs = frozenset({"barycenter"})
    truth_needs = frozenset({"barycenter"})
    outputs = {"barycenter_w2": "min", "barycenter_w2_px": "min", "barycenter_entropy": "min", "entropy_excess": "min", "barycenter_l1": "min"}

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        q, true_q = solution.barycenter, truth.barycenter
        if q.shape != true_q.shape:
            raise ValueError(f"barycenter has shape {tuple(q.shape)}, the truth {tuple(true_q.shape)}")
        if not torch.isfinite(q).all():
            return {"barycenter_w2": float("nan")}
        support = problem.x
        w2 = _w2(q, true_q, support)
        out = {"barycenter_w2": w2, "barycenter_entropy": _entropy(q),
               "entropy_excess": _entropy(q) - _entropy(true_q),
               "barycenter_l1": float((q.double() / q.double().sum() - true_q.double()).abs().sum())}
        if problem.grid_shape is not None:
            out["barycenter_w2_px"] = w2 * max(problem.grid_shape)
        return out


METRICS = [BarycenterW2]
