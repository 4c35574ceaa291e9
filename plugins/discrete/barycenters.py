"""Wasserstein barycenters on a grid: the IPOT barycenter (seed 004 Algorithm 2), POT's Sinkhorn / Bregman and
convolutional barycenters as the baselines seed 004 compares with, and a task whose barycenter is known exactly.

**Task ``location_scale_barycenter``.** ``K`` measures on a ``grid x grid`` pixel grid over ``[0, 1]^2``, each a
copy of one template (a scikit-learn digit, or a Gaussian bump) rescaled by ``s_k`` and centred at ``c_k``, both
drawn from the seed (seed 004 rescales digits from half to double size with a random bias towards a corner). For
the squared-Euclidean cost the W2 barycenter of a location-scale family ``(s_k . + c_k) # mu_0`` is the member
at the weighted mean scale and mean location, ``(s_bar . + c_bar) # mu_0``: that is the truth. All measures and
the truth are rendered by the same rule (bilinear template density, normalised per measure), so the truth is
exact up to the rendering of one template on the grid.

**Solvers** (kind ``barycenter``, squared-Euclidean cost on the grid):

- ``ipot_barycenter``: proximal point iterations with a KL proximal term; each step is one (or ``inner_iters``)
  Sinkhorn barycenter projection(s) on the kernel ``G * Gamma_k``, so after ``t`` steps the plans carry
  ``exp(-t C / beta)``: the effective regularisation shrinks like ``beta / t`` and the barycenter sharpens,
  while ``G = exp(-C / beta)`` itself stays representable. Memory: ``K`` plans of ``n x n``.
- ``pot_barycenter``: POT's ``ot.bregman.barycenter`` (iterative Bregman projections, Benamou et al. 2015),
  ``method`` ``sinkhorn`` or ``sinkhorn_log``, at ``epsilon`` (the blur IPOT avoids).
- ``pot_convolutional_barycenter``: POT's ``ot.bregman.convolutional_barycenter2d`` (Solomon et al. 2015):
  Gaussian convolutions instead of ``n x n`` kernels; only for grids.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numpy as np
import torch

from otbench import Problem, Solution, Solver, Task, Truth, hookimpl
from otbench.api import InvalidInput
from otbench.costs import pairwise_cost

__all__ = ["LocationScaleBarycenter", "IPOTBarycenter", "POTBarycenter", "POTConvolutionalBarycenter",
           "ipot_barycenter", "render_template"]


# ----------------------------------------------------------------------------------------------------- task
def grid_points(side: int) -> torch.Tensor:
    """Pixel centres of a ``side x side`` grid over ``[0, 1]^2``, row-major, ``[side^2, 2]`` float64."""
    coords = (torch.arange(side, dtype=torch.float64) + 0.5) / side
    return torch.stack(torch.meshgrid(coords, coords, indexing="ij"), dim=-1).reshape(-1, 2)


@functools.lru_cache(maxsize=16)
def _template(name: str) -> torch.Tensor:
    """A template density on its own unit square, ``[1, 1, h, w]`` float64 (non-negative, not normalised)."""
    if name == "gaussian":
        c = (torch.arange(16, dtype=torch.float64) + 0.5) / 16 - 0.5
        img = torch.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * 0.15**2))
        return img[None, None]
    if name.startswith("digit"):
        from otbench.data import load_digits

        digit = int(name[5:]) if len(name) > 5 else 3
        x, y = load_digits("train")
        img = x[y == digit][0, 0].double()  # the first training image of that digit
        return torch.nn.functional.pad(img, (1, 1, 1, 1))[None, None]  # zero border: compact support
    raise InvalidInput(f"location_scale_barycenter: template must be 'gaussian' or 'digit<0-9>', got {name!r}")


def render_template(template: str, side: int, scale: float, centre: tuple[float, float], width: float) -> torch.Tensor:
    """The template scaled to ``width * scale`` of the unit square and centred at ``centre``, as a histogram
    ``[side^2]`` (bilinear density at the pixel centres, normalised)."""
    pts = grid_points(side)
    local = (pts - torch.tensor(centre, dtype=torch.float64)) / (width * scale)  # template coords in [-0.5, 0.5]
    sample_at = (local * 2.0).flip(-1)[None, None]  # grid_sample wants (x=column, y=row) in [-1, 1]
    dens = torch.nn.functional.grid_sample(_template(template), sample_at, mode="bilinear", padding_mode="zeros",
                                           align_corners=False).reshape(-1)
    dens = dens.clamp_min(0)
    total = float(dens.sum())
    if not total > 0:
        raise InvalidInput(f"location_scale_barycenter: template {template!r} at scale {scale:.3g} falls off the grid")
    return dens / total


class LocationScaleBarycenter(Task):
    """K rescaled and shifted copies of one template on a grid; exact W2 barycenter: mean scale, mean centre."""

    name = "location_scale_barycenter"
    kind = "barycenter"
    primary_metric = ("barycenter_w2", "min")
    defaults = {"grid": 32, "n_measures": 16, "template": "digit3", "width": 0.45, "scale_range": (0.5, 1.5),
                "shift": 0.12, "weights": "uniform"}

    def _check(self) -> None:
        p = self.params
        if not (isinstance(p["grid"], int) and 8 <= p["grid"] <= 128):
            raise InvalidInput(f"location_scale_barycenter: grid must be an integer in [8, 128], got {p['grid']!r}")
        if not (isinstance(p["n_measures"], int) and p["n_measures"] >= 2):
            raise InvalidInput(f"location_scale_barycenter: n_measures must be an integer >= 2, got {p['n_measures']!r}")
        lo, hi = (float(v) for v in p["scale_range"])
        if not 0 < lo <= hi:
            raise InvalidInput(f"location_scale_barycenter: scale_range must be (low, high) with 0 < low <= high, "
                               f"got {p['scale_range']!r}")
        if hi * float(p["width"]) / 2 + float(p["shift"]) > 0.5:
            raise InvalidInput("location_scale_barycenter: width * max scale / 2 + shift must be <= 0.5 so that "
                               "every copy stays on the grid")
        if p["weights"] not in ("uniform", "random"):
            raise InvalidInput(f"location_scale_barycenter: weights must be 'uniform' or 'random', got {p['weights']!r}")

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        self._check()
        p = self.params
        gen = torch.Generator().manual_seed(int(seed))
        k, side, width = int(p["n_measures"]), int(p["grid"]), float(p["width"])
        lo, hi = (float(v) for v in p["scale_range"])
        scales = lo + (hi - lo) * torch.rand(k, generator=gen, dtype=torch.float64)
        centres = 0.5 + float(p["shift"]) * (2 * torch.rand(k, 2, generator=gen, dtype=torch.float64) - 1)
        if p["weights"] == "uniform":
            weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        else:
            weights = torch.rand(k, generator=gen, dtype=torch.float64) + 0.5
            weights = weights / weights.sum()
        measures = torch.stack([render_template(p["template"], side, float(s), (float(c[0]), float(c[1])), width)
                                for s, c in zip(scales, centres)])
        mean_scale = float(weights @ scales)
        mean_centre = (weights @ centres).tolist()
        truth_hist = render_template(p["template"], side, mean_scale, (mean_centre[0], mean_centre[1]), width)
        support = grid_points(side)
        cost = pairwise_cost(support, support, "sqeuclidean")
        device = torch.device(device)
        problem = Problem("barycenter", 2, "sqeuclidean", device, dtype, x=support.to(device, dtype),
                          cost_matrix=cost.to(device, dtype), measures=measures.to(device, dtype),
                          measure_weights=weights.to(device, dtype), grid_shape=(side, side), seed=int(seed),
                          info={"mean_scale": mean_scale, "n_support": side * side})
        truth = Truth(barycenter=truth_hist.to(device), extra={"mean_scale": mean_scale, "mean_centre": mean_centre})
        return problem, truth


# -------------------------------------------------------------------------------------------------- solvers
def _check_barycenter_problem(problem: Problem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(measures [K, n], weights [K], cost [n, n])`` validated, float64."""
    measures = problem.measures.double()
    weights = problem.measure_weights.double()
    if not torch.isfinite(measures).all() or (measures < 0).any():
        raise InvalidInput("barycenter measures must be finite and non-negative")
    sums = measures.sum(1)
    if (sums - 1).abs().max() > 1e-6:
        raise InvalidInput(f"every barycenter measure must sum to 1, got sums in [{float(sums.min()):.6g}, "
                           f"{float(sums.max()):.6g}]")
    if (weights < 0).any() or abs(float(weights.sum()) - 1) > 1e-6:
        raise InvalidInput(f"measure_weights must be non-negative and sum to 1, got {weights.tolist()}")
    cost = problem.cost_matrix if problem.cost_matrix is not None else problem.ground_cost(problem.x, problem.x)
    return measures, weights, cost.double()


def ipot_barycenter(measures: torch.Tensor, weights: torch.Tensor, cost: torch.Tensor, beta: float = 0.01,
                    inner_iters: int = 1, max_iter: int = 50, tol: float = 0.0
                    ) -> tuple[torch.Tensor, int, list[dict[str, float]]]:
    """Seed 004 Algorithm 2. Returns ``(q [n], iterations, trace)``; stops early when ``|q_t - q_{t-1}|_1 <= tol``.

    Each outer step sets ``H_k = G * Gamma_k`` and runs ``inner_iters`` iterative Bregman projections
    ``b_k = p_k / (H_k^T a_k)``, ``q = prod_k (a_k * H_k b_k)^{w_k}``, ``a_k = a_k q / (a_k * H_k b_k)``, then
    ``Gamma_k = diag(a_k) H_k diag(b_k)``. The row scalings start from ``a_k = 1`` in every step: the updates
    keep ``prod_k a_k^{w_k}`` fixed, and the entropic barycenter is the fixed point with that product equal to
    1. Algorithm 2 as printed starts them from ``q / (H_k b_k)`` instead, which converges to a *feasible but
    sub-optimal* barycenter (measured: 0.0055 in L1 off POT's ``ot.bregman.barycenter`` after one step with a
    converged inner loop; tests/test_barycenters.py pins the equality). The scalings are folded into
    ``Gamma_k`` every step, so they stay near 1 and nothing overflows in float64 even for small ``beta``.
    """
    k, n = measures.shape
    kernel = torch.exp(-cost / beta)
    plans = kernel.expand(k, n, n).clone()  # Gamma_k after the first H_k = G * 1 1^T
    b = torch.ones(k, n, dtype=cost.dtype, device=cost.device)
    q = torch.full((n,), 1.0 / n, dtype=cost.dtype, device=cost.device)
    a = torch.ones_like(b)
    tiny = torch.finfo(cost.dtype).tiny
    trace: list[dict[str, float]] = []
    start = time.perf_counter()
    it = 0
    for it in range(1, max_iter + 1):
        if it > 1:
            plans.mul_(kernel)  # H_k = G * Gamma_k
        q_prev = q
        a = torch.ones_like(b)  # prod_k a_k^{w_k} = 1: the normalisation IBP's optimal fixed point needs
        for _ in range(inner_iters):
            hta = torch.bmm(plans.transpose(1, 2), a.unsqueeze(-1)).squeeze(-1).clamp_min(tiny)
            b = measures / hta  # columns of diag(a) H diag(b) = p_k
            rows = (a * torch.bmm(plans, b.unsqueeze(-1)).squeeze(-1)).clamp_min(tiny)
            q = torch.exp((weights[:, None] * torch.log(rows)).sum(0))  # KL projection: geometric mean
            a = a * q / rows  # rows = q; keeps prod_k a_k^{w_k} unchanged
        plans.mul_(a.unsqueeze(-1)).mul_(b.unsqueeze(1))  # Gamma_k = diag(a_k) H_k diag(b_k)
        change = float((q - q_prev).abs().sum())
        trace.append({"iteration": float(it), "time": time.perf_counter() - start, "change": change})
        if change <= tol:
            break
    return q / q.sum(), it, trace  # the geometric mean sums to < 1 until the rows agree


class _BarycenterSolver(Solver):
    kinds = frozenset({"barycenter"})
    costs = frozenset({"sqeuclidean"})
    provides = frozenset({"barycenter"})

    def _positive(self, key: str, integer: bool = False) -> None:
        v = self.params[key]
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if not ok or isinstance(v, bool) or v <= 0:
            kind = "an integer >= 1" if integer else "a positive number"
            raise InvalidInput(f"{self.name}: {key} must be {kind}, got {v!r}")


class IPOTBarycenter(_BarycenterSolver):
    """IPOT barycenter (seed 004 Alg. 2): proximal point steps, each a Bregman barycenter projection."""

    name = "ipot_barycenter"
    defaults = {"beta": 0.01, "inner_iters": 1, "max_iter": 50, "tol": 0.0}

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        for key in ("beta", "inner_iters", "max_iter"):
            self._positive(key, integer=key != "beta")
        measures, weights, cost = _check_barycenter_problem(problem)
        p = self.params
        q, iterations, trace = ipot_barycenter(measures, weights, cost, float(p["beta"]), int(p["inner_iters"]),
                                               int(p["max_iter"]), float(p["tol"]))
        return Solution(barycenter=q.to(problem.device, problem.dtype), iterations=iterations, trace=trace,
                        info={"final_change": trace[-1]["change"]})


class POTBarycenter(_BarycenterSolver):
    """POT's ot.bregman.barycenter: entropic (Sinkhorn / iterative Bregman projection) barycenter."""

    name = "pot_barycenter"
    defaults = {"epsilon": 1e-3, "method": "sinkhorn_log", "max_iter": 1000, "tol": 1e-7}

    def prepare(self, problem: Problem) -> None:
        import ot  # noqa: F401

    def solve(self, problem: Problem) -> Solution:
        import ot

        self.check_supported(problem)
        self._positive("epsilon")
        self._positive("max_iter", integer=True)
        if self.params["method"] not in ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized"):
            raise InvalidInput(f"pot_barycenter: method must be sinkhorn, sinkhorn_log or sinkhorn_stabilized, "
                               f"got {self.params['method']!r}")
        measures, weights, cost = _check_barycenter_problem(problem)
        p = self.params
        q, log = ot.bregman.barycenter(measures.T.numpy(), cost.numpy(), float(p["epsilon"]), weights.numpy(),
                                       method=p["method"], numItermax=int(p["max_iter"]), stopThr=float(p["tol"]),
                                       log=True, warn=False)
        q = np.clip(np.nan_to_num(np.asarray(q, dtype=np.float64)), 0, None)
        q = q / q.sum()
        return Solution(barycenter=torch.as_tensor(q, device=problem.device, dtype=problem.dtype),
                        iterations=int(log.get("niter", 0) or 0))


class POTConvolutionalBarycenter(_BarycenterSolver):
    """POT's ot.bregman.convolutional_barycenter2d: entropic barycenter by Gaussian convolutions (grids only)."""

    name = "pot_convolutional_barycenter"
    defaults = {"epsilon": 1e-3, "method": "sinkhorn_log", "max_iter": 1000, "tol": 1e-7}

    def supports(self, problem: Problem) -> str | None:
        reason = super().supports(problem)
        if reason is None and (problem.grid_shape is None or len(problem.grid_shape) != 2):
            return "pot_convolutional_barycenter needs measures on a 2-D grid (grid_shape)"
        return reason

    def prepare(self, problem: Problem) -> None:
        import ot  # noqa: F401

    def solve(self, problem: Problem) -> Solution:
        import ot

        self.check_supported(problem)
        self._positive("epsilon")
        self._positive("max_iter", integer=True)
        if self.params["method"] not in ("sinkhorn", "sinkhorn_log"):
            raise InvalidInput(f"pot_convolutional_barycenter: method must be sinkhorn or sinkhorn_log, "
                               f"got {self.params['method']!r}")
        measures, weights, _ = _check_barycenter_problem(problem)
        h, w = problem.grid_shape
        if h != w:
            raise InvalidInput("pot_convolutional_barycenter: POT's kernel assumes a square grid over [0, 1]^2")
        p = self.params
        # POT builds its Gaussian kernel on a [0, 1] grid with the same spacing as ours, exp(-|x-y|^2 / eps)
        images = measures.reshape(-1, h, w).numpy()
        q, log = ot.bregman.convolutional_barycenter2d(images, float(p["epsilon"]), weights.numpy(),
                                                       method=p["method"], numItermax=int(p["max_iter"]),
                                                       stopThr=float(p["tol"]), log=True, warn=False)
        q = np.clip(np.nan_to_num(np.asarray(q, dtype=np.float64).reshape(-1)), 0, None)
        q = q / q.sum()
        return Solution(barycenter=torch.as_tensor(q, device=problem.device, dtype=problem.dtype),
                        iterations=int(log.get("niter", 0) or 0))


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    register(IPOTBarycenter)
    register(POTBarycenter)
    register(POTConvolutionalBarycenter)


@hookimpl
def otbench_register_tasks(register: Callable[[type], None]) -> None:
    register(LocationScaleBarycenter)

