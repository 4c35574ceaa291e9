"""Metrics for W1 tasks with a known optimal critic (Euclidean cost, continuous problems).

Definitions follow Korotin et al. 2022 ("Kantorovich Strikes Back!"), on fresh evaluation samples:

- ``grad_cos`` = mean <g_hat(x), g*(x)> / (|g_hat(x)| |g*(x)| + 1e-15) and ``grad_l2`` = mean |g_hat(x) - g*(x)|^2
  for x ~ P, with g* the true critic gradient. g_hat is the solver critic's gradient; for a map solver it is the
  displacement direction (x - T(x)) / |x - T(x)|, for plan samples (x - y) / |x - y| at the sampled x (which
  points like grad f* because f*(x) - f*(y) = |x - y| on an optimal plan). A zero critic scores cos 0, L2 1.
- ``w1_estimate`` = mean f(x) - mean f(y) on independent samples (critic), else the solver's distance, else
  the transport cost; ``w1_rel_error_pct`` = 100 |w1_estimate - W1| / W1. (The transport cost of a map or
  plan against the true W1 is ``map_cost_error`` / ``plan_cost_error`` in otbench.metrics.maps.)

And what keeps a critic's number honest: the largest critic gradient norm on P, Q and random interpolates,
the share of those points where it exceeds 1.05, and the slackness gap E[|x - y| - (f(x) - f(y))] on true plan
pairs (zero for an optimal critic; each term is >= 0 for a 1-Lipschitz one). The Lemma 3.5 bounds of seed 003
(energy distance <= W1 <= mean pairwise distance) are reported beside the true W1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from otbench.api import InvalidInput, Metric, Problem, Solution, Truth

__all__ = ["critic_value_and_grad", "gradient_agreement", "displacement_direction", "METRICS"]

N_GRAD = 4096       # gradient metrics (the published setting)
N_VALUE = 16384     # dual W1 estimate (forward passes only)
LIP_THRESHOLD = 1.05
_CHUNK = 4096
F64 = torch.float64


def _fd_grad(critic: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Central finite differences, for critics that are not differentiable by autograd."""
    h = float(torch.finfo(x.dtype).eps) ** (1.0 / 3.0) * max(1.0, float(x.abs().max()))
    grads = torch.empty(x.shape, dtype=F64, device=x.device)
    with torch.no_grad():
        for i in range(x.shape[1]):
            step = torch.zeros_like(x)
            step[:, i] = h
            grads[:, i] = (critic(x + step).reshape(-1).to(F64) - critic(x - step).reshape(-1).to(F64)) / (2 * h)
    return grads


def critic_value_and_grad(critic: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(x), grad f(x))`` in float64 for a critic ``[n, d] -> [n]`` (autograd; finite differences if the
    critic's output carries no graph)."""
    values, grads = [], []
    for start in range(0, x.shape[0], _CHUNK):
        xc = x[start:start + _CHUNK].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            f = critic(xc)
            if not isinstance(f, torch.Tensor) or f.numel() != xc.shape[0]:
                shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise InvalidInput(f"critic must map [n, d] -> [n]; got {shape} for input {tuple(xc.shape)}")
            f = f.reshape(-1)
            g = None
            if f.requires_grad:
                (g,) = torch.autograd.grad(f.sum(), xc, allow_unused=True)
                if g is None:
                    g = torch.zeros_like(xc)
        values.append(f.detach().to(F64))
        grads.append(g.detach().to(F64) if g is not None else _fd_grad(critic, xc.detach()))
    return torch.cat(values), torch.cat(grads)


def critic_values(critic: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], _CHUNK):
            xc = x[start:start + _CHUNK]
            f = critic(xc)
            if f.numel() != xc.shape[0]:
                raise InvalidInput(f"critic must map [n, d] -> [n]; got {tuple(f.shape)} for {tuple(xc.shape)}")
            out.append(f.reshape(-1).to(F64))
    return torch.cat(out)


def gradient_agreement(g_hat: torch.Tensor, g_true: torch.Tensor) -> tuple[float, float]:
    """``(cos, L2)``: mean cosine similarity and mean squared difference between gradient fields."""
    g_hat, g_true = g_hat.to(F64), g_true.to(F64)
    if g_hat.shape != g_true.shape:
        raise InvalidInput(f"gradient shapes differ: {tuple(g_hat.shape)} vs {tuple(g_true.shape)}")
    cos = (g_hat * g_true).sum(1) / (g_hat.norm(dim=1) * g_true.norm(dim=1) + 1e-15)
    l2 = ((g_hat - g_true) ** 2).sum(1)
    return float(cos.mean()), float(l2.mean())


def displacement_direction(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(x - y) / |x - y|`` in float64; rows with ``x == y`` get the zero vector (no direction)."""
    d = x.to(F64) - y.to(F64)
    n = d.norm(dim=1, keepdim=True)
    return torch.where(n > 0, d / n.clamp_min(1e-300), torch.zeros_like(d))


def _rel_pct(estimate: float, true: float) -> float:
    return 100.0 * abs(estimate - true) / abs(true) if true != 0 else (0.0 if estimate == 0 else float("inf"))


def _transport_pairs(solution: Solution, truth: Truth, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs ``(x, y)`` moved by the solution: ``(x, T(x))`` with x ~ P for a map, else its plan samples."""
    if solution.map is not None:
        x = truth.sample_p(n)
        with torch.no_grad():
            y = solution.map(x)
        if y.shape != x.shape:
            raise InvalidInput(f"map must send [n, d] to [n, d]; got {tuple(y.shape)} for {tuple(x.shape)}")
        return x, y
    x, y = solution.plan_samples(n)
    if x.shape != y.shape or x.ndim != 2:
        raise InvalidInput(f"plan_samples must return two [n, d] tensors; got {tuple(x.shape)}, {tuple(y.shape)}")
    return x, y


class _W1Metric(Metric):
    """Continuous problems with the Euclidean cost only (W1)."""

    kinds = frozenset({"continuous"})

    def applies(self, problem: Problem, truth: Truth, solution: Solution) -> str | None:
        reason = super().applies(problem, truth, solution)
        if reason is None and problem.cost != "euclidean":
            return f"W1 metrics need the euclidean cost, not {problem.cost!r}"
        return reason


class W1Gradient(_W1Metric):
    """Gradient cos / L2 against the true critic (from the critic, else map, else plan samples) and W1 error."""

    name = "w1_gradient"
    truth_needs = frozenset({"critic_grad", "sample_p", "sample_q", "distance"})
    outputs = {"grad_cos": "max", "grad_l2": "min", "w1_estimate": "none", "w1_estimate_se": "none",
               "w1_rel_error_pct": "min"}

    def applies(self, problem: Problem, truth: Truth, solution: Solution) -> str | None:
        reason = super().applies(problem, truth, solution)
        if reason is None and not solution.parts() & {"critic", "map", "plan_samples"}:
            return "solution has no critic, map or plan_samples"
        return reason

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        w1 = float(truth.distance)
        if solution.critic is not None:
            x = truth.sample_p(N_GRAD)
            _, g_hat = critic_value_and_grad(solution.critic, x)
            cos, l2 = gradient_agreement(g_hat, truth.critic_grad(x))
            fx = critic_values(solution.critic, truth.sample_p(N_VALUE))
            fy = critic_values(solution.critic, truth.sample_q(N_VALUE))
            est = float(fx.mean() - fy.mean())
            se = float((fx.var() / fx.numel() + fy.var() / fy.numel()).sqrt())
        else:
            x, y = _transport_pairs(solution, truth, N_GRAD)
            cos, l2 = gradient_agreement(displacement_direction(x, y), truth.critic_grad(x))
            if solution.distance is not None:
                est, se = float(solution.distance), 0.0
            else:
                cost = (x.to(F64) - y.to(F64)).norm(dim=1)
                est, se = float(cost.mean()), float(cost.std() / cost.numel() ** 0.5)
        return {"grad_cos": cos, "grad_l2": l2, "w1_estimate": est, "w1_estimate_se": se,
                "w1_rel_error_pct": _rel_pct(est, w1)}


class W1TransportGradient(_W1Metric):
    """For map or plan solvers: cos / L2 of the displacement direction against the true critic gradient.

    Reported even when the solution also has a critic (``grad_*`` then comes from the critic), so that a
    maximin solver's mover is scored too. The transport cost against the true W1 is ``map_cost_error`` /
    ``plan_cost_error`` (otbench.metrics.maps).
    """

    name = "w1_transport_gradient"
    truth_needs = frozenset({"critic_grad", "sample_p"})
    outputs = {"transport_grad_cos": "max", "transport_grad_l2": "min"}

    def applies(self, problem: Problem, truth: Truth, solution: Solution) -> str | None:
        reason = super().applies(problem, truth, solution)
        if reason is None and not solution.parts() & {"map", "plan_samples"}:
            return "solution has no map or plan_samples"
        return reason

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        x, y = _transport_pairs(solution, truth, N_GRAD)
        cos, l2 = gradient_agreement(displacement_direction(x, y), truth.critic_grad(x))
        return {"transport_grad_cos": cos, "transport_grad_l2": l2}


class W1CriticHonesty(_W1Metric):
    """Largest critic gradient norm (P, Q, interpolates), share above 1.05, slackness gap on plan pairs."""

    name = "w1_critic_lipschitz"
    needs = frozenset({"critic"})
    truth_needs = frozenset({"sample_p", "sample_q", "sample_plan"})
    outputs = {"grad_norm_max": "none", "grad_norm_mean": "none", "lip_violation_share": "min",
               "slackness_gap": "none", "slackness_gap_abs": "min"}

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        x, y = truth.sample_p(N_GRAD), truth.sample_q(N_GRAD)
        gen = torch.Generator(device=x.device).manual_seed(problem.seed)
        eps = torch.rand(N_GRAD, 1, generator=gen, device=x.device, dtype=x.dtype)
        z = eps * x + (1 - eps) * y
        norms = torch.cat([critic_value_and_grad(solution.critic, pts)[1].norm(dim=1) for pts in (x, y, z)])
        xp, yp = truth.sample_plan(N_GRAD)
        gap = (xp.to(F64) - yp.to(F64)).norm(dim=1) - (critic_values(solution.critic, xp)
                                                         - critic_values(solution.critic, yp))
        return {"grad_norm_max": float(norms.max()), "grad_norm_mean": float(norms.mean()),
                "lip_violation_share": float((norms > LIP_THRESHOLD).to(F64).mean()),
                "slackness_gap": float(gap.mean()), "slackness_gap_abs": float(gap.abs().mean())}


class W1Bounds(_W1Metric):
    """The true W1 with its standard error, beside seed 003 Lemma 3.5's energy lower and mean-distance upper bounds."""

    name = "w1_bounds"
    truth_needs = frozenset({"distance", "w1_lower_energy", "w1_upper_mean_distance"})
    outputs = {"w1_true": "none", "w1_true_se": "none", "w1_lower_energy": "none", "w1_upper_mean_distance": "none"}

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        return {"w1_true": float(truth.distance), "w1_true_se": float(truth.distance_se or 0.0),
                "w1_lower_energy": float(truth.extra["w1_lower_energy"]),
                "w1_upper_mean_distance": float(truth.extra["w1_upper_mean_distance"])}


METRICS = [W1Gradient, W1TransportGradient, W1CriticHonesty, W1Bounds]
