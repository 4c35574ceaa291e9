"""Input checks shared by discrete solvers: clear errors instead of silent garbage."""

from __future__ import annotations

import torch

from otbench.api import InvalidInput, Problem


def check_discrete_problem(problem: Problem, mass_rtol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a discrete balanced problem and return ``(a, b, cost_matrix)``.

    Weights default to uniform; the cost matrix is computed from points when not given. Raises
    ``InvalidInput`` naming the offending field for NaN/negative weights, unequal masses, a cost with
    NaN/inf or a shape that does not match the weights.
    """
    cost = problem.cost_matrix
    if cost is None:
        cost = problem.ground_cost(problem.x, problem.y)
    if cost.ndim != 2:
        raise InvalidInput(f"cost_matrix must be 2-D [n, m], got shape {tuple(cost.shape)}")
    n, m = cost.shape
    a = problem.a if problem.a is not None else torch.full((n,), 1.0 / n, dtype=cost.dtype, device=cost.device)
    b = problem.b if problem.b is not None else torch.full((m,), 1.0 / m, dtype=cost.dtype, device=cost.device)
    for label, w, size in (("a", a, n), ("b", b, m)):
        if w.ndim != 1 or w.shape[0] != size:
            raise InvalidInput(f"weights {label} have shape {tuple(w.shape)}, expected ({size},) to match cost_matrix {tuple(cost.shape)}")
        if not torch.isfinite(w).all():
            raise InvalidInput(f"weights {label} contain NaN or inf")
        if (w < 0).any():
            raise InvalidInput(f"weights {label} contain negative entries (min {float(w.min()):.3g})")
    if not torch.isfinite(cost).all():
        raise InvalidInput("cost_matrix contains NaN or inf")
    sa, sb = float(a.double().sum()), float(b.double().sum())
    if sa <= 0 or abs(sa - sb) > mass_rtol * max(sa, sb):
        raise InvalidInput(f"balanced OT needs equal total masses, got sum(a)={sa:.8g} and sum(b)={sb:.8g}")
    return a, b, cost
