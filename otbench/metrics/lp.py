"""Metrics and helpers for discrete transport plans: LP gap, marginal violation, sparsity, time to accuracy.

Every discrete task's truth holds the exact LP optimum ``OPT`` (``truth.distance``) and, when it has one, the
float64 cost matrix the optimum was computed on (``truth.extra["cost_matrix"]``); the gaps below are measured
against that matrix, so a solver run in float32 is judged on the exact problem.

Two gaps are reported for a returned plan ``P``:

- ``lp_gap_raw = (<C, P> - OPT) / OPT`` for ``P`` as returned. An entropic plan misses its marginals a little,
  so this number can be *below* zero: it is not a certificate.
- ``lp_gap = (<C, R(P)> - OPT) / OPT`` where ``R`` is the rounding of Altschuler, Weed and Rigollet (2017) onto
  the transport polytope U(a, b) (scale rows and columns down to their marginals, then add the missing mass as
  a rank-one term). ``R(P)`` is feasible, so ``lp_gap >= 0`` up to rounding error, and ``R(P) = P`` for a plan
  that already meets its marginals. This is the primary metric of the discrete tasks: a solver cannot look
  better than optimal by returning an infeasible plan, and a fast but biased one (Sinkhorn at large epsilon)
  shows its bias here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from otbench.api import InvalidInput, Metric, Problem, Solution, Truth

__all__ = [
    "marginal_errors",
    "round_to_polytope",
    "plan_cost",
    "relative_gap",
    "effective_support",
    "time_to_accuracy_curve",
    "first_time_below",
    "c_transform_dual",
    "LPGap",
    "MarginalViolation",
    "PlanSparsity",
    "TimeToAccuracy",
    "GAP_LEVELS",
]

#: thresholds at which the time-to-accuracy metric reports the first time the feasible LP gap fell below
GAP_LEVELS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
#: an entry counts as non-zero when it carries more than this fraction of the plan's mass
NNZ_REL_THRESHOLD = 1e-8


def marginal_errors(plan: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """L1 errors ``(|P 1 - a|_1, |P^T 1 - b|_1)`` computed in float64."""
    p = plan.double()
    return (float((p.sum(1) - a.double()).abs().sum()), float((p.sum(0) - b.double()).abs().sum()))


def round_to_polytope(plan: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Feasible plan near ``plan`` (Altschuler-Weed-Rigollet rounding): exact marginals ``a`` and ``b``.

    Rows, then columns, are scaled down where they carry too much mass; the missing mass
    ``err_a err_b^T / |err_a|_1`` is added back. Works in the dtype of ``plan``; negative entries are clipped.
    """
    p = plan.clamp(min=0)
    a = a.to(p.dtype)
    b = b.to(p.dtype)
    r = p.sum(1)
    x = torch.where(r > a, a / torch.where(r > 0, r, torch.ones_like(r)), torch.ones_like(r))
    p = p * x[:, None]
    c = p.sum(0)
    y = torch.where(c > b, b / torch.where(c > 0, c, torch.ones_like(c)), torch.ones_like(c))
    p = p * y[None, :]
    err_a = (a - p.sum(1)).clamp(min=0)
    err_b = (b - p.sum(0)).clamp(min=0)
    total = err_a.sum()
    if float(total) > 0:
        p = p + torch.outer(err_a, err_b) / total
    return p


def plan_cost(plan: torch.Tensor, cost: torch.Tensor) -> float:
    """``<C, P>`` in float64."""
    return float((plan.double() * cost.to(plan.device).double()).sum())


def relative_gap(value: float, opt: float) -> float:
    """``(value - opt) / opt``; the absolute difference when ``opt == 0``."""
    return (value - opt) / abs(opt) if opt != 0 else value - opt


def effective_support(plan: torch.Tensor) -> float:
    """``exp(H(P / |P|))``: the number of entries a plan effectively spreads over (n for a permutation)."""
    p = plan.double().clamp(min=0)
    p = p / p.sum()
    nz = p[p > 0]
    return float(torch.exp(-(nz * nz.log()).sum()))


def c_transform_dual(cost: torch.Tensor, f: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                     dtype: torch.dtype = torch.float64) -> float:
    """A lower bound on OPT from any potential ``f``: ``g = f^c``, ``f' = g^c``, bound ``<a, f'> + <b, g>``.

    The pair ``(f', g)`` is dual feasible (``f'_i + g_j <= C_ij``), so the bound is a certificate: together
    with a feasible plan's cost it brackets the LP optimum. The minima are taken in ``dtype`` (float64 by
    default: exact up to float64 rounding), the sums in float64.
    """
    c = cost.to(dtype)
    g = (c - f.to(dtype)[:, None]).amin(0)
    f2 = (c - g[None, :]).amin(1)
    return float((a.double() * f2.double()).sum() + (b.double() * g.double()).sum())


def _lp_data(truth: Truth, problem: Problem, plan: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, b, C)`` in float64 on the plan's device, C from the truth when the task kept the exact matrix."""
    from otbench.validation import check_discrete_problem

    cost = truth.extra.get("cost_matrix") if truth.extra else None
    a, b, c = check_discrete_problem(problem)
    if cost is None:
        cost = c
    dev = plan.device
    cost, a, b = cost.to(dev, torch.float64), a.to(dev, torch.float64), b.to(dev, torch.float64)
    if tuple(plan.shape) != tuple(cost.shape):
        raise InvalidInput(f"plan has shape {tuple(plan.shape)}, expected {tuple(cost.shape)}")
    return a, b, cost


class LPGap(Metric):
    """LP gap of the returned plan after rounding onto U(a, b), the raw gap, and both costs."""

    name = "lp_gap"
    needs = frozenset({"plan"})
    truth_needs = frozenset({"distance"})
    kinds = frozenset({"discrete"})
    outputs = {"lp_gap": "min", "lp_gap_raw": "none", "plan_cost": "none", "plan_cost_feasible": "none",
               "lp_optimum": "none"}

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        plan = solution.plan.double()
        a, b, cost = _lp_data(truth, problem, plan)
        opt = float(truth.distance)
        raw = plan_cost(plan, cost)
        feasible = plan_cost(round_to_polytope(plan, a, b), cost)
        return {"lp_gap": relative_gap(feasible, opt), "lp_gap_raw": relative_gap(raw, opt), "plan_cost": raw,
                "plan_cost_feasible": feasible, "lp_optimum": opt}


class MarginalViolation(Metric):
    """L1 violation of both marginals (relative to the total mass), mass error and negative mass of a plan."""

    name = "marginal_violation"
    needs = frozenset({"plan"})
    kinds = frozenset({"discrete"})
    outputs = {"marginal_violation": "min", "marginal_violation_a": "min", "marginal_violation_b": "min",
               "mass_error": "min", "negative_mass": "min"}

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        plan = solution.plan.double()
        a, b, _ = _lp_data(truth, problem, plan)
        mass = float(a.sum())
        ea, eb = marginal_errors(plan, a, b)
        return {"marginal_violation": (ea + eb) / mass, "marginal_violation_a": ea / mass,
                "marginal_violation_b": eb / mass, "mass_error": abs(float(plan.sum()) - mass) / mass,
                "negative_mass": float(plan.clamp(max=0).abs().sum()) / mass}


class PlanSparsity(Metric):
    """Sparsity of a plan against the LP vertex bound n + m - 1: counted and entropy-effective support."""

    name = "plan_sparsity"
    needs = frozenset({"plan"})
    kinds = frozenset({"discrete"})
    outputs = {"plan_nnz": "none", "plan_nnz_ratio": "min", "plan_eff_support_ratio": "min"}

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        plan = solution.plan.double().clamp(min=0)
        n, m = plan.shape
        vertex = n + m - 1  # an optimal basic solution of the LP has at most this many non-zeros
        nnz = int((plan > NNZ_REL_THRESHOLD * float(plan.sum())).sum())
        return {"plan_nnz": float(nnz), "plan_nnz_ratio": nnz / vertex,
                "plan_eff_support_ratio": effective_support(plan) / vertex}


def time_to_accuracy_curve(trace: Sequence[dict[str, Any]], opt: float) -> list[tuple[float, int, float]]:
    """``[(time, iteration, gap)]`` from a solver trace: the feasible LP gap per checkpoint.

    Uses ``value_feasible`` (cost of the rounded plan) when the trace has it, else ``|value - OPT| / OPT``.
    Checkpoints without a value are skipped.
    """
    curve = []
    for point in trace:
        if "value_feasible" in point:
            gap = relative_gap(float(point["value_feasible"]), opt)
        elif "value" in point:
            gap = abs(relative_gap(float(point["value"]), opt))
        else:
            continue
        curve.append((float(point.get("time", float("nan"))), int(point.get("iteration", -1)), gap))
    return curve


def first_time_below(curve: Sequence[tuple[float, int, float]], level: float) -> tuple[float, float]:
    """``(time, iteration)`` of the first checkpoint with gap <= level, ``(inf, inf)`` if none."""
    for t, it, gap in curve:
        if gap <= level:
            return t, float(it)
    return math.inf, math.inf


class TimeToAccuracy(Metric):
    """Time and iterations at which the traced feasible LP gap first fell below 1e-2, 1e-3, 1e-4 (inf: never)."""

    name = "time_to_accuracy"
    needs = frozenset({"plan"})
    truth_needs = frozenset({"distance"})
    kinds = frozenset({"discrete"})
    outputs = {**{f"time_to_gap_{lvl:.0e}": "min" for lvl in GAP_LEVELS},
               **{f"iters_to_gap_{lvl:.0e}": "min" for lvl in GAP_LEVELS},
               "trace_final_gap": "min", "trace_points": "none"}

    def applies(self, problem: Problem, truth: Truth, solution: Solution) -> str | None:
        reason = super().applies(problem, truth, solution)
        if reason is None and not any("value" in p or "value_feasible" in p for p in solution.trace):
            return "solution trace has no 'value' checkpoints"
        return reason

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        curve = time_to_accuracy_curve(solution.trace, float(truth.distance))
        out: dict[str, float] = {}
        for lvl in GAP_LEVELS:
            t, it = first_time_below(curve, lvl)
            out[f"time_to_gap_{lvl:.0e}"] = t
            out[f"iters_to_gap_{lvl:.0e}"] = it
        out["trace_final_gap"] = curve[-1][2] if curve else math.inf
        out["trace_points"] = float(len(curve))
        return out


METRICS = [LPGap, MarginalViolation, PlanSparsity, TimeToAccuracy]
