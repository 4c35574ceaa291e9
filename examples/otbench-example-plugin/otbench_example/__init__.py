"""An example otbench plugin package: a sliced-Wasserstein solver, added without touching otbench.

Sliced W_p averages the 1-D W_p^p of random projections: cheap, and a *lower bound* of W_p^p up to a
dimension factor, so on a known-W1 task it shows up as biased low. It is here to show the plugin shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from otbench import Problem, Solution, Solver, hookimpl


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


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    register(SlicedWasserstein)
