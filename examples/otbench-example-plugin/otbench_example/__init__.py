"""An example otbench plugin package: a solver and a task, added without touching otbench.

- ``sliced_wasserstein`` (solver): sliced W_p averages the 1-D W_p^p of random projections: cheap, and a
  *lower bound* of W_p^p up to a dimension factor, so on a known-W1 task it shows up as biased low.
- ``uniform_cube_shift`` (task): P = uniform on the cube [0, side]^dim, Q = P translated by a vector of length
  ``shift``. A translation is optimal for every convex cost of x - y, so the true OT cost is known exactly:
  W1 = |m| (euclidean), W2^2 = |m|^2 (sqeuclidean), and the optimal map is x -> x + m.
- ``north_west_corner`` (solver, *discrete* kind): the north-west corner rule on both supports sorted along one
  direction (the first coordinate by default, or ``<x, direction>``). It returns a ``plan`` (scored by the exact-LP
  metrics ``lp_gap``, ``marginal_violation``, ``plan_sparsity``) and its cost as ``distance``. In 1-D it is the
  monotone coupling, optimal for every convex cost of x - y (``lp_gap`` ~ 0 on ``histograms_1d``); in higher
  dimensions it is feasible (both marginals met up to round-off, at most n + m - 1 non-zeros) but sub-optimal.
  It needs coordinates: a problem with only a ``cost_matrix`` is refused by ``supports()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from otbench import InvalidInput, Problem, Solution, Solver, Task, Truth, hookimpl
from otbench.sampling import make_sampler_pair
from otbench.validation import check_discrete_problem


class SlicedWasserstein(Solver):
    """Sliced Wasserstein: mean over random directions of the 1-D OT cost of the projections."""

    name = "sliced_wasserstein"
    kinds = frozenset({"continuous"})
    costs = frozenset({"euclidean", "sqeuclidean"})
    provides = frozenset({"distance"})
    defaults = {"n_samples": 2048, "n_projections": 128}

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        n, k = int(self.params["n_samples"]), int(self.params["n_projections"])
        x, y = problem.sample_p(n), problem.sample_q(n)
        gen = torch.Generator(device=problem.device).manual_seed(problem.seed)
        theta = torch.randn(problem.dim, k, generator=gen, device=problem.device, dtype=problem.dtype)
        theta = theta / theta.norm(dim=0, keepdim=True)
        px, _ = torch.sort(x @ theta, dim=0)
        py, _ = torch.sort(y @ theta, dim=0)
        gap = (px - py).abs()
        cost = gap if problem.cost == "euclidean" else gap.square()
        return Solution(distance=float(cost.mean()), iterations=1)


class UniformCubeShift(Task):
    """Uniform cube to its translate by a vector of length `shift`: W1 = shift, W2^2 = shift^2, map x + m.

    Parameters: ``dim`` (>= 1), ``side`` (cube side, > 0), ``shift`` (length of the translation, >= 0),
    ``cost`` (``euclidean`` or ``sqeuclidean``). The direction of the translation is drawn from the seed.
    """

    name = "uniform_cube_shift"
    version = "1"  # bump when a change alters the numbers this task produces
    kind = "continuous"
    primary_metric = ("distance_rel_error", "min")
    defaults = {"dim": 2, "side": 1.0, "shift": 1.0, "cost": "euclidean"}
    # beyond the checks inferred from the defaults (types; dim >= 1), what `otbench validate` enforces
    param_schema = {"side": {"min": 1e-9}, "shift": {"min": 0.0}, "cost": {"choices": ["euclidean", "sqeuclidean"]}}

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        dim, side, shift = int(self.params["dim"]), float(self.params["side"]), float(self.params["shift"])
        cost = self.params["cost"]
        if dim < 1 or side <= 0 or shift < 0 or cost not in ("euclidean", "sqeuclidean"):
            raise InvalidInput(f"uniform_cube_shift: need dim >= 1, side > 0, shift >= 0 and cost euclidean or "
                               f"sqeuclidean; got {self.params}")
        direction = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        m = (direction / direction.norm() * shift).to(device=device, dtype=dtype)

        def draw_p(n: int, gen: torch.Generator) -> torch.Tensor:
            return torch.rand(n, dim, generator=gen, device=device, dtype=dtype) * side

        def draw_q(n: int, gen: torch.Generator) -> torch.Tensor:
            return draw_p(n, gen) + m

        # four independent seeded streams: the solver's two, and the evaluation's two (never the same draws)
        solver_p, solver_q, eval_p, eval_q = make_sampler_pair(draw_p, draw_q, seed, device)
        problem = Problem("continuous", dim, cost, device, dtype, sample_p=solver_p, sample_q=solver_q, seed=seed)
        truth = Truth(distance=shift if cost == "euclidean" else shift**2, sample_p=eval_p, sample_q=eval_q,
                      map=lambda x: x + m)
        return problem, truth


class NorthWestCorner(Solver):
    """North-west corner rule on supports sorted along a direction: the exact plan in 1-D, feasible in d-D.

    Parameter: ``direction`` (None = sort by the first coordinate; else a list of ``dim`` numbers, not all
    zero: sort by the projection ``<x, direction>``). Both supports are sorted (stably) by that key; the rule
    then walks the sorted rows and columns once, sending from each row to the current column the smaller of
    what the row still has and what the column still needs, and moving on from whichever is used up: at most
    n + m - 1 non-zeros, O(n + m) after the O(n log n + m log m) sort, accumulated in float64.

    For 1-D points this is the monotone (quantile) coupling, optimal for every convex cost of x - y. In more
    dimensions the plan is feasible but generally not optimal. ``supports()`` refuses a problem without points (a
    bare ``cost_matrix``: there is nothing to sort) and one whose ``dim`` differs from the length of ``direction``.
    """

    name = "north_west_corner"
    kinds = frozenset({"discrete"})
    costs = frozenset({"euclidean", "sqeuclidean"})  # convex costs of x - y: the 1-D optimality holds for both
    provides = frozenset({"distance", "plan"})
    defaults: dict[str, Any] = {"direction": None}
    param_schema = {"direction": {"type": "list", "nullable": True}}  # what `otbench validate` checks

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        direction = self.params["direction"]
        if direction is not None:  # checked here, so that a bad suite fails at `otbench validate`, not mid-run
            ok = (isinstance(direction, (list, tuple)) and len(direction) > 0
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                          for v in direction))
            if not ok or not any(v != 0 for v in direction):
                raise InvalidInput(f"north_west_corner: direction must be null or a non-empty list of finite "
                                   f"numbers, not all zero; got {direction!r}")

    def supports(self, problem: Problem) -> str | None:
        reason = super().supports(problem)
        if reason is None and (problem.x is None or problem.y is None):
            return ("north_west_corner sorts the points x and y; this problem has only a cost_matrix "
                    "(use exact_lp or a Sinkhorn solver)")
        direction = self.params["direction"]
        if reason is None and direction is not None and len(direction) != problem.dim:
            # a suite may pair one direction with tasks of several dimensions: skip the others, with the reason
            return f"north_west_corner: direction has {len(direction)} entries, but the points have dim {problem.dim}"
        return reason

    def _keys(self, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The 1-D sort keys of both supports, in float64."""
        x, y = x.double().reshape(x.shape[0], -1).cpu(), y.double().reshape(y.shape[0], -1).cpu()
        direction = self.params["direction"]
        if direction is None:
            return x[:, 0].numpy(), y[:, 0].numpy()
        if len(direction) != x.shape[1] or y.shape[1] != x.shape[1]:  # supports() checked problem.dim already
            raise InvalidInput(f"north_west_corner: direction has {len(direction)} entries, but the points have "
                               f"{x.shape[1]} (x) and {y.shape[1]} (y) coordinates")
        theta = torch.tensor([float(v) for v in direction], dtype=torch.float64)
        return (x @ theta).numpy(), (y @ theta).numpy()

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        a, b, cost = check_discrete_problem(problem)  # uniform weights when absent; clear errors on bad input
        a64, b64 = a.double().cpu().numpy(), b.double().cpu().numpy()
        b64 = b64 * (a64.sum() / b64.sum())  # equal masses up to the validator's tolerance: make them equal
        kx, ky = self._keys(problem.x, problem.y)
        rows, cols = np.argsort(kx, kind="stable"), np.argsort(ky, kind="stable")  # sorted position -> index
        n, m = len(rows), len(cols)
        plan = np.zeros((n, m), dtype=np.float64)
        i = j = 0
        left_a, left_b = a64[rows[0]], b64[cols[0]]  # what row i still has to send, column j still needs
        while True:
            if i == n - 1 and j == m - 1:  # the last cell takes what is left (equal up to round-off)
                plan[rows[i], cols[j]] = max(min(left_a, left_b), 0.0)
                break
            if j == m - 1 or (i < n - 1 and left_a <= left_b):  # row i is used up: it all goes to column j
                plan[rows[i], cols[j]] = left_a
                left_b -= left_a
                i += 1
                left_a = a64[rows[i]]
            else:  # column j is filled: row i sends it what it still needs and keeps the rest
                plan[rows[i], cols[j]] = left_b
                left_a -= left_b
                j += 1
                left_b = b64[cols[j]]
        plan_t = torch.as_tensor(plan)
        value = float((plan_t * cost.double().cpu()).sum())
        return Solution(distance=value, plan=plan_t.to(problem.device, problem.dtype), iterations=n + m - 1,
                        info={"value": value})


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    register(SlicedWasserstein)
    register(NorthWestCorner)


@hookimpl
def otbench_register_tasks(register: Callable[[type], None]) -> None:
    register(UniformCubeShift)
