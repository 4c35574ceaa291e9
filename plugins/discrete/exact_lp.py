"""Exact linear-programming OT (POT's network simplex, ``ot.emd``): the reference solver.

On a discrete problem it returns the exact plan and its cost. On a continuous problem it draws ``n``
unpaired samples from each side and solves the empirical problem: this is the classical *discrete baseline*,
unbiased in low dimension and badly biased in high dimension. Its matched pairs give a plan sampler and, for
the Euclidean cost, gradient directions (x - y)/|x - y| at the sampled points.

POT's default iteration cap (100k) is too small beyond a few thousand points and then returns a wrong answer
with only a warning; here the cap grows with the problem size and "stopped before optimality" is an error.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from otbench import Problem, Solution, Solver, hookimpl
from otbench.api import InvalidInput, SolverDidNotConverge
from otbench.validation import check_discrete_problem


def emd_iteration_cap(n: int, m: int) -> int:
    """Network-simplex pivots needed grow roughly like (n + m) * min(n, m); leave a wide margin."""
    return int(max(100_000, 50 * (n + m) * max(1, min(n, m))))


def exact_emd(a: np.ndarray, b: np.ndarray, cost: np.ndarray, max_iter: int | None = None) -> tuple[np.ndarray, float]:
    """Solve the balanced OT LP exactly in float64. Raises ``SolverDidNotConverge`` if the simplex stops early."""
    import ot

    n, m = cost.shape
    cap = max_iter if max_iter is not None else emd_iteration_cap(n, m)
    plan, log = ot.emd(
        np.ascontiguousarray(a, dtype=np.float64),
        np.ascontiguousarray(b, dtype=np.float64),
        np.ascontiguousarray(cost, dtype=np.float64),
        numItermax=cap,
        log=True,
    )
    if log.get("result_code", 1) != 1:
        raise SolverDidNotConverge(
            f"ot.emd stopped before optimality on a {n}x{m} problem (result_code={log.get('result_code')}: "
            f"{log.get('warning')}); iteration cap was {cap}"
        )
    return plan, float(log["cost"])


class ExactLP(Solver):
    """Exact LP (network simplex). Discrete: the exact plan. Continuous: LP on n unpaired samples per side."""

    name = "exact_lp"
    kinds = frozenset({"continuous", "discrete"})
    costs = frozenset({"euclidean", "sqeuclidean", "matrix"})
    provides = frozenset({"distance", "plan", "plan_samples"})
    provides_by_kind = {"discrete": frozenset({"distance", "plan"}),
                        "continuous": frozenset({"distance", "plan_samples"})}
    defaults = {"n_samples": 1024, "max_iter": None}

    def prepare(self, problem: Problem) -> None:
        import ot  # noqa: F401  (POT's first import takes seconds; keep it out of the timed solve)

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        if problem.kind == "discrete":
            a, b, cost = check_discrete_problem(problem)
            plan, value = exact_emd(a.double().cpu().numpy(), b.double().cpu().numpy(),
                                    cost.double().cpu().numpy(), self.params["max_iter"])
            return Solution(distance=value, plan=torch.as_tensor(plan, device=problem.device, dtype=problem.dtype),
                            info={"support_size": float(np.count_nonzero(plan > 0))})

        n = int(self.params["n_samples"])
        if n < 2:
            raise InvalidInput(f"exact_lp: n_samples must be >= 2, got {n}")
        x, y = problem.sample_p(n), problem.sample_q(n)
        cost = problem.ground_cost(x.double(), y.double()).cpu().numpy()
        weights = np.full(n, 1.0 / n)
        plan, value = exact_emd(weights, weights, cost, self.params["max_iter"])
        # With uniform weights and equal sizes the LP optimum is a permutation: match each x to one y.
        match = torch.as_tensor(plan.argmax(axis=1), device=x.device)
        x_matched, y_matched = x, y[match]
        gen = torch.Generator().manual_seed(problem.seed)

        def plan_samples(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.randint(0, n, (k,), generator=gen).to(x.device)
            return x_matched[idx], y_matched[idx]

        return Solution(distance=value, plan_samples=plan_samples, info={"n_samples": float(n)})


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    register(ExactLP)
