"""An example otbench plugin package: a solver and a task, added without touching otbench.

- ``sliced_wasserstein`` (solver): sliced W_p averages the 1-D W_p^p of random projections: cheap, and a
  *lower bound* of W_p^p up to a dimension factor, so on a known-W1 task it shows up as biased low.
- ``uniform_cube_shift`` (task): P = uniform on the cube [0, side]^dim, Q = P translated by a vector of length
  ``shift``. A translation is optimal for every convex cost of x - y, so the true OT cost is known exactly:
  W1 = |m| (euclidean), W2^2 = |m|^2 (sqeuclidean), and the optimal map is x -> x + m.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from otbench import InvalidInput, Problem, Solution, Solver, Task, Truth, hookimpl
from otbench.sampling import make_sampler_pair


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


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    register(SlicedWasserstein)


@hookimpl
def otbench_register_tasks(register: Callable[[type], None]) -> None:
    register(UniformCubeShift)
