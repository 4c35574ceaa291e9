"""Continuous pairs whose OT answer is known in closed form (sanity tasks).

- ``gaussian_shift``: P = N(0, s^2 I), Q = N(m, s^2 I). The optimal map is x -> x + m for every convex cost,
  so W1 = |m| (Euclidean cost) and W2^2 = |m|^2 (squared Euclidean). An optimal critic for W1 is
  f(x) = -<x, m>/|m|, whose gradient is -m/|m| everywhere.
- ``radial_scaling``: P = N(0, s^2 I), Q = law of c X for X ~ P (scale factor c > 0, c != 1). The map x -> c x
  is optimal for both costs: it is the gradient of the convex c|x|^2/2 (squared Euclidean), and for W1 the
  potential u(x) = sign(c - 1) |x| is 1-Lipschitz with u(c x) - u(x) = |c x - x|, which certifies the plan.
  So W1 = |c - 1| E|X| with E|X| = s sqrt(2) Gamma((d+1)/2) / Gamma(d/2), and W2^2 = (c - 1)^2 s^2 d. An
  optimal critic is f* = -u, with gradient -sign(c - 1) x/|x|.
"""

from __future__ import annotations

import math
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


def gaussian_norm_mean(dim: int, scale: float = 1.0) -> float:
    """E|X| for X ~ N(0, scale^2 I_dim): scale * sqrt(2) * Gamma((dim + 1)/2) / Gamma(dim/2)."""
    return float(scale) * math.sqrt(2.0) * math.exp(math.lgamma((dim + 1) / 2) - math.lgamma(dim / 2))


class RadialScaling(Task):
    """Gaussian to radially scaled Gaussian: W1 = |c - 1| E|X|, W2^2 = (c - 1)^2 s^2 d, optimal map c x."""

    name = "radial_scaling"
    kind = "continuous"
    primary_metric = ("distance_rel_error", "min")
    defaults = {"dim": 2, "factor": 2.0, "scale": 1.0, "cost": "euclidean"}

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        dim, factor, scale, cost = (self.params[k] for k in ("dim", "factor", "scale", "cost"))
        if int(dim) != dim or int(dim) < 1 or not scale > 0 or not factor > 0 or factor == 1:
            raise InvalidInput(f"radial_scaling needs an integer dim >= 1, scale > 0 and factor > 0, != 1; "
                               f"got {self.params}")
        if cost not in ("euclidean", "sqeuclidean"):
            raise InvalidInput(f"radial_scaling: cost must be 'euclidean' or 'sqeuclidean', got {cost!r}")
        dim, factor, scale = int(dim), float(factor), float(scale)

        def draw_p(n: int, gen: torch.Generator) -> torch.Tensor:
            return scale * torch.randn(n, dim, generator=gen, device=device, dtype=dtype)

        def draw_q(n: int, gen: torch.Generator) -> torch.Tensor:
            return factor * draw_p(n, gen)

        solver_p, solver_q, eval_p, eval_q = make_sampler_pair(draw_p, draw_q, seed, device)
        if cost == "euclidean":
            distance = abs(factor - 1.0) * gaussian_norm_mean(dim, scale)
        else:
            distance = (factor - 1.0) ** 2 * scale**2 * dim
        sign = 1.0 if factor > 1 else -1.0

        def critic_grad(x: torch.Tensor) -> torch.Tensor:
            norm = x.norm(dim=1, keepdim=True)
            return torch.where(norm > 0, -sign * x / norm.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))

        def true_map(x: torch.Tensor) -> torch.Tensor:
            return factor * x

        def sample_plan(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = eval_p(n)
            return x, factor * x

        problem = Problem(kind="continuous", dim=dim, cost=cost, device=device, dtype=dtype,
                          sample_p=solver_p, sample_q=solver_q, seed=seed)
        truth = Truth(distance=distance, distance_se=0.0, critic_grad=critic_grad, sample_p=eval_p,
                      sample_q=eval_q, sample_plan=sample_plan, map=true_map)
        return problem, truth


@hookimpl
def otbench_register_tasks(register: Callable[[type], None]) -> None:
    register(GaussianShift)
    register(RadialScaling)
