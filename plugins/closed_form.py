"""Continuous pairs whose OT answer is known in closed form (sanity tasks).

- ``gaussian_shift``: P = N(0, s^2 I), Q = N(m, s^2 I). The optimal map is x -> x + m for every convex cost,
  so W1 = |m| (Euclidean cost) and W2^2 = |m|^2 (squared Euclidean). An optimal critic for W1 is
  f(x) = -<x, m>/|m|, whose gradient is -m/|m| everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from otbench import Problem, Task, Truth, hookimpl
from otbench.api import InvalidInput
from otbench.sampling import make_sampler_pair


class GaussianShift(Task):
    """Gaussian to translated Gaussian: W1 = |m|, W2^2 = |m|^2, optimal map x + m."""

    name = "gaussian_shift"
    kind = "continuous"
    primary_metric = ("distance_rel_error", "min")
    defaults = {"dim": 2, "shift": 2.0, "scale": 1.0, "cost": "euclidean"}

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        dim, shift, scale, cost = (self.params[k] for k in ("dim", "shift", "scale", "cost"))
        if int(dim) < 1 or scale <= 0 or shift == 0:
            raise InvalidInput(f"gaussian_shift needs dim >= 1, scale > 0, shift != 0; got {self.params}")
        if cost not in ("euclidean", "sqeuclidean"):
            raise InvalidInput(f"gaussian_shift: cost must be 'euclidean' or 'sqeuclidean', got {cost!r}")
        dim = int(dim)
        # The shift points along the diagonal so that every coordinate moves: |m| = shift.
        m = torch.full((dim,), float(shift) / dim**0.5, device=device, dtype=dtype)

        def draw_p(n: int, gen: torch.Generator) -> torch.Tensor:
            return scale * torch.randn(n, dim, generator=gen, device=device, dtype=dtype)

        def draw_q(n: int, gen: torch.Generator) -> torch.Tensor:
            return draw_p(n, gen) + m

        solver_p, solver_q, eval_p, eval_q = make_sampler_pair(draw_p, draw_q, seed, device)
        distance = abs(float(shift)) if cost == "euclidean" else float(shift) ** 2
        unit = m / m.norm()

        def critic_grad(x: torch.Tensor) -> torch.Tensor:
            return (-unit).expand_as(x).clone()

        def true_map(x: torch.Tensor) -> torch.Tensor:
            return x + m

        def sample_plan(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = eval_p(n)
            return x, x + m

        problem = Problem(kind="continuous", dim=dim, cost=cost, device=device, dtype=dtype,
                          sample_p=solver_p, sample_q=solver_q, seed=seed)
        truth = Truth(distance=distance, distance_se=0.0, critic_grad=critic_grad, sample_p=eval_p,
                      sample_q=eval_q, sample_plan=sample_plan, map=true_map)
        return problem, truth


@hookimpl
def otbench_register_tasks(register: Callable[[type], None]) -> None:
    register(GaussianShift)
