"""Continuous pairs with a known optimal *map* (quadratic cost), plus the SPOT papers' toy pairs.

- ``gaussian_w2``: P = N(m_p, S_p), Q = N(m_q, S_q). For the squared Euclidean cost the optimal map is affine,
  T*(x) = m_q + A (x - m_p) with A = S_p^{-1/2} (S_p^{1/2} S_q S_p^{1/2})^{1/2} S_p^{-1/2}, and
  W2^2 = |m_p - m_q|^2 + tr S_p + tr S_q - 2 tr (S_p^{1/2} S_q S_p^{1/2})^{1/2} (computed in float64).
- ``convex_map``: P = N(0, I_D), Q = grad psi # P for a random strictly convex psi (the idea of the continuous
  W2 benchmark of Korotin et al. 2021). By Brenier's theorem grad psi is the optimal map for the quadratic cost.
  psi(x) = 1/2 x^T A x + b^T x + sum_k w_k l softplus((a_k^T x - c_k) / l) + beta tau LSE(U x / tau), with A
  symmetric positive definite and w_k, beta > 0, so that Hess psi >= A (strongly convex): the certificate is
  <grad psi(x) - grad psi(x'), x - x'> >= lambda_min(A) |x - x'|^2.
- ``spot_gaussians``: the Wasserstein-distance experiment of Xie's thesis (seed 004, section 3.6.1):
  P = N((-2.5, 0), I), Q = N((2.5, 0), I), Euclidean cost, W1 = 5 (squared Euclidean: W2^2 = 25).
- ``spot_curved``: the second SPOT toy pair (seed 000, 4.3.1; seed 004, 3.6.3): P = N((-2.5, 0), 0.5 I),
  Q = law of (sin(Y1) + Y2, 2 Y1 - 3) with Y1 ~ U[0, 3], Y2 ~ N(2, 0.1) (0.1 read as a variance, as in the
  thesis's N(a, b) notation). No closed form exists: the truth holds only evaluation samplers, so only the
  marginal-fit metrics apply. An exact LP between large samples would NOT be truth (the empirical OT cost is
  biased upward, with a bias that decays like n^(-1/d) in general), so none is given.

W2 convention: ``Truth.distance`` is the OT cost for the task's cost, i.e. W2^2 = E|x - T*(x)|^2 for
``sqeuclidean`` (never W2 itself), and W1 for ``euclidean``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from otbench import Problem, Task, Truth, hookimpl
from otbench.api import InvalidInput
from otbench.sampling import derive_seed, make_generator, make_sampler_pair

F64 = torch.float64


# --------------------------------------------------------------------------------------------- Gaussians
def sym_sqrt(mat: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (float64 eigendecomposition)."""
    evals, evecs = torch.linalg.eigh(mat.to(F64))
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def gaussian_w2_map(cov_p: torch.Tensor, cov_q: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix A of the optimal map x -> m_q + A (x - m_p) between N(., cov_p) and N(., cov_q)."""
    root_p = sym_sqrt(cov_p)
    evals, evecs = torch.linalg.eigh(cov_p.to(F64))
    inv_root_p = (evecs * evals.rsqrt()) @ evecs.T
    mid = sym_sqrt(root_p @ cov_q.to(F64) @ root_p)
    a = inv_root_p @ mid @ inv_root_p
    return 0.5 * (a + a.T)


def gaussian_w2_squared(mean_p: torch.Tensor, cov_p: torch.Tensor, mean_q: torch.Tensor, cov_q: torch.Tensor) -> float:
    """W2^2 between two Gaussians (Bures formula), in float64."""
    root_p = sym_sqrt(cov_p)
    cross = torch.linalg.eigvalsh(root_p @ cov_q.to(F64) @ root_p).clamp_min(0).sqrt().sum()
    value = (mean_p.to(F64) - mean_q.to(F64)).square().sum() + cov_p.to(F64).trace() + cov_q.to(F64).trace() - 2 * cross
    return float(value.clamp_min(0))


def _random_spd(dim: int, eig_min: float, eig_max: float, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    log_eigs = math.log(eig_min) + (math.log(eig_max) - math.log(eig_min)) * torch.rand(dim, generator=gen, dtype=F64)
    return (q * log_eigs.exp()) @ q.T


def _as_matrix(value: object, dim: int, field: str) -> torch.Tensor:
    mat = torch.as_tensor(value, dtype=F64)
    if mat.ndim == 1:
        mat = torch.diag(mat)
    if mat.shape != (dim, dim) or not torch.isfinite(mat).all() or not torch.allclose(mat, mat.T, atol=1e-12):
        raise InvalidInput(f"gaussian_w2: {field} must be a symmetric {dim}x{dim} matrix (or a diagonal), got {value!r}")
    if torch.linalg.eigvalsh(mat).min() <= 0:
        raise InvalidInput(f"gaussian_w2: {field} must be positive definite")
    return mat


def _as_vector(value: object, dim: int, field: str) -> torch.Tensor:
    vec = torch.as_tensor(value, dtype=F64).reshape(-1)
    if vec.shape != (dim,) or not torch.isfinite(vec).all():
        raise InvalidInput(f"gaussian_w2: {field} must be a finite vector of length {dim}, got {value!r}")
    return vec


class GaussianW2(Task):
    """Gaussian to Gaussian, squared Euclidean cost: closed-form optimal map (affine) and W2^2 (Bures)."""

    name = "gaussian_w2"
    kind = "continuous"
    primary_metric = ("l2_uvp", "min")
    defaults = {"dim": 2, "instance": 0, "mean_scale": 1.0, "eig_min": 0.25, "eig_max": 4.0,
                "mean_p": None, "cov_p": None, "mean_q": None, "cov_q": None}

    def parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mean_p, cov_p, mean_q, cov_q)`` in float64: explicit values where given, else drawn from ``instance``."""
        p = self.params
        dim = int(p["dim"])
        if dim < 1 or not 0 < p["eig_min"] <= p["eig_max"]:
            raise InvalidInput(f"gaussian_w2 needs dim >= 1 and 0 < eig_min <= eig_max; got {p}")
        gen = make_generator(derive_seed(int(p["instance"]), "gaussian_w2", dim))
        drawn = [
            float(p["mean_scale"]) * torch.randn(dim, generator=gen, dtype=F64),
            _random_spd(dim, p["eig_min"], p["eig_max"], gen),
            float(p["mean_scale"]) * torch.randn(dim, generator=gen, dtype=F64),
            _random_spd(dim, p["eig_min"], p["eig_max"], gen),
        ]
        out = []
        for field, value in zip(("mean_p", "cov_p", "mean_q", "cov_q"), drawn):
            given = p[field]
            if given is None:
                out.append(value)
            elif field.startswith("mean"):
                out.append(_as_vector(given, dim, field))
            else:
                out.append(_as_matrix(given, dim, field))
        return tuple(out)  # type: ignore[return-value]

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        dim = int(self.params["dim"])
        mean_p, cov_p, mean_q, cov_q = self.parameters()
        a64 = gaussian_w2_map(cov_p, cov_q)
        chol_p, chol_q = torch.linalg.cholesky(cov_p), torch.linalg.cholesky(cov_q)
        mp, mq, lp, lq, a = (t.to(device=device, dtype=dtype) for t in (mean_p, mean_q, chol_p, chol_q, a64))

        def draw_p(n: int, gen: torch.Generator) -> torch.Tensor:
            return mp + torch.randn(n, dim, generator=gen, device=device, dtype=dtype) @ lp.T

        def draw_q(n: int, gen: torch.Generator) -> torch.Tensor:
            return mq + torch.randn(n, dim, generator=gen, device=device, dtype=dtype) @ lq.T

        def true_map(x: torch.Tensor) -> torch.Tensor:
            return mq.to(x.dtype) + (x - mp.to(x.dtype)) @ a.to(x.dtype)  # A is symmetric

        solver_p, solver_q, eval_p, eval_q = make_sampler_pair(draw_p, draw_q, seed, device)

        def sample_plan(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = eval_p(n)
            return x, true_map(x)

        problem = Problem(kind="continuous", dim=dim, cost="sqeuclidean", device=device, dtype=dtype,
                          sample_p=solver_p, sample_q=solver_q, seed=seed)
        truth = Truth(distance=gaussian_w2_squared(mean_p, cov_p, mean_q, cov_q), distance_se=0.0,
                      sample_p=eval_p, sample_q=eval_q, sample_plan=sample_plan, map=true_map,
                      extra={"mean_p": mean_p, "cov_p": cov_p, "mean_q": mean_q, "cov_q": cov_q,
                             "map_matrix": a64, "var_q": float(cov_q.trace())})
        return problem, truth


# ------------------------------------------------------------------------------------ convex potential
class ConvexPotential:
    """psi(x) = 1/2 x^T A x + b^T x + sum_k w_k l softplus((a_k.x - c_k)/l) + beta tau LSE(U x / tau).

    All weights are positive and A is positive definite, so psi is strictly (indeed lambda_min(A)-strongly)
    convex and ``grad`` is a strictly monotone map. Parameters are float64; ``to`` casts a copy.
    """

    def __init__(self, quad: torch.Tensor, lin: torch.Tensor, ridge_dirs: torch.Tensor, ridge_offsets: torch.Tensor,
                 ridge_weights: torch.Tensor, ridge_width: float, lse_dirs: torch.Tensor, lse_weight: float,
                 lse_temp: float) -> None:
        self.quad, self.lin = quad, lin
        self.ridge_dirs, self.ridge_offsets, self.ridge_weights = ridge_dirs, ridge_offsets, ridge_weights
        self.ridge_width, self.lse_dirs, self.lse_weight, self.lse_temp = ridge_width, lse_dirs, lse_weight, lse_temp

    @property
    def strong_convexity(self) -> float:
        """lambda_min(A): Hess psi >= lambda_min(A) I everywhere."""
        return float(torch.linalg.eigvalsh(self.quad.to(F64)).min())

    def to(self, device: torch.device, dtype: torch.dtype) -> "ConvexPotential":
        cast = {k: (v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return ConvexPotential(**cast)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """psi(x), shape [n]."""
        quad = 0.5 * ((x @ self.quad) * x).sum(-1) + x @ self.lin
        ridges = (x @ self.ridge_dirs.T - self.ridge_offsets) / self.ridge_width
        ridge = self.ridge_width * (torch.nn.functional.softplus(ridges) * self.ridge_weights).sum(-1)
        lse = self.lse_weight * self.lse_temp * torch.logsumexp(x @ self.lse_dirs.T / self.lse_temp, dim=-1)
        return quad + ridge + lse

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """grad psi(x), shape [n, d] (analytic; the optimal map for the quadratic cost)."""
        ridges = (x @ self.ridge_dirs.T - self.ridge_offsets) / self.ridge_width
        soft = torch.softmax(x @ self.lse_dirs.T / self.lse_temp, dim=-1)
        return (x @ self.quad + self.lin + (torch.sigmoid(ridges) * self.ridge_weights) @ self.ridge_dirs
                + self.lse_weight * soft @ self.lse_dirs)


def _unit_rows(n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    rows = torch.randn(n, dim, generator=gen, dtype=F64)
    return rows / rows.norm(dim=1, keepdim=True)


@functools.lru_cache(maxsize=32)
def _convex_map_reference(key: tuple) -> dict[str, float]:
    """Float64 Monte Carlo reference values of an instance: W2^2 with its standard error, Var(Q), and the
    L2-UVP of the best affine fit (how far the map is from affine). Independent of the run seed."""
    params = dict(key)
    psi = ConvexMap(**params).potential()
    dim, n_mc = int(params["dim"]), int(params["n_reference"])
    gen = make_generator(derive_seed(int(params["instance"]), "convex_map", "reference", dim))
    sq_sum = sq_sq_sum = 0.0
    ys, xs = [], []
    for start in range(0, n_mc, 16384):
        x = torch.randn(min(16384, n_mc - start), dim, generator=gen, dtype=F64)
        y = psi.grad(x)
        cost = (x - y).square().sum(-1)
        sq_sum += float(cost.sum())
        sq_sq_sum += float(cost.square().sum())
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    mean = sq_sum / n_mc
    se = math.sqrt(max(sq_sq_sum / n_mc - mean**2, 0.0) / n_mc)
    var_q = float((y - y.mean(0)).square().sum(-1).mean())
    design = torch.cat([x, torch.ones(n_mc, 1, dtype=F64)], dim=1)
    coef = torch.linalg.lstsq(design, y).solution
    affine_uvp = 100 * float((design @ coef - y).square().sum(-1).mean()) / var_q
    return {"distance": mean, "distance_se": se, "var_q": var_q, "affine_l2_uvp": affine_uvp}


class ConvexMap(Task):
    """Q = grad psi # P for a random strictly convex psi: the optimal W2 map is grad psi (Brenier)."""

    name = "convex_map"
    kind = "continuous"
    primary_metric = ("l2_uvp", "min")
    defaults = {"dim": 8, "instance": 0, "n_ridges": None, "ridge_scale": 2.0, "ridge_width": 0.2,
                "lse_terms": 8, "eig_min": 0.25, "eig_max": 1.0, "shift": 1.0, "n_reference": 131072}

    def potential(self) -> ConvexPotential:
        """The instance's psi (float64 on CPU), drawn from ``instance`` only (not from the run seed)."""
        p = self.params
        dim = int(p["dim"])
        k = int(p["n_ridges"]) if p["n_ridges"] is not None else 2 * dim
        if dim < 1 or k < 0 or int(p["lse_terms"]) < 1 or p["ridge_scale"] < 0 or p["ridge_width"] <= 0 \
                or not 0 < p["eig_min"] <= p["eig_max"] or int(p["n_reference"]) < 1000:
            raise InvalidInput(f"convex_map: invalid parameters {p}")
        gen = make_generator(derive_seed(int(p["instance"]), "convex_map", dim))
        quad = _random_spd(dim, p["eig_min"], p["eig_max"], gen)
        lin = float(p["shift"]) * torch.randn(dim, generator=gen, dtype=F64) / math.sqrt(dim)
        dirs = _unit_rows(k, dim, gen)
        offsets = torch.randn(k, generator=gen, dtype=F64)
        # weights scaled so that the summed ridge displacement has a size of order sqrt(dim) whatever k is
        weights = float(p["ridge_scale"]) * (0.5 + torch.rand(k, generator=gen, dtype=F64)) * math.sqrt(2 * dim / max(k, 1))
        lse_dirs = _unit_rows(int(p["lse_terms"]), dim, gen)
        lse_weight = float(p["ridge_scale"]) * math.sqrt(dim)
        return ConvexPotential(quad, lin, dirs, offsets, weights, float(p["ridge_width"]), lse_dirs, lse_weight, 1.0)

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        dim = int(self.params["dim"])
        psi64 = self.potential()
        psi = psi64.to(device, dtype)
        ref = _convex_map_reference(tuple(sorted(self.params.items())))

        def draw_p(n: int, gen: torch.Generator) -> torch.Tensor:
            return torch.randn(n, dim, generator=gen, device=device, dtype=dtype)

        def draw_q(n: int, gen: torch.Generator) -> torch.Tensor:
            return psi.grad(draw_p(n, gen))

        def true_map(x: torch.Tensor) -> torch.Tensor:
            return psi.grad(x) if x.dtype == dtype else psi64.to(x.device, x.dtype).grad(x)

        solver_p, solver_q, eval_p, eval_q = make_sampler_pair(draw_p, draw_q, seed, device)

        def sample_plan(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = eval_p(n)
            return x, true_map(x)

        problem = Problem(kind="continuous", dim=dim, cost="sqeuclidean", device=device, dtype=dtype,
                          sample_p=solver_p, sample_q=solver_q, seed=seed)
        truth = Truth(distance=ref["distance"], distance_se=ref["distance_se"], sample_p=eval_p, sample_q=eval_q,
                      sample_plan=sample_plan, map=true_map,
                      extra={"potential": psi64, "strong_convexity": psi64.strong_convexity,
                             "var_q": ref["var_q"], "affine_l2_uvp": ref["affine_l2_uvp"]})
        return problem, truth


# ------------------------------------------------------------------------------------- SPOT toy pairs
class SpotGaussians(Task):
    """Seed-004 section 3.6.1: N((-2.5, 0), I) to N((2.5, 0), I); W1 = 5 (Euclidean), W2^2 = 25 (squared)."""

    name = "spot_gaussians"
    kind = "continuous"
    primary_metric = ("distance_rel_error", "min")
    defaults = {"cost": "euclidean", "variance": 1.0, "separation": 5.0}

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        cost, var, sep = self.params["cost"], float(self.params["variance"]), float(self.params["separation"])
        if cost not in ("euclidean", "sqeuclidean") or var <= 0 or sep <= 0:
            raise InvalidInput(f"spot_gaussians needs cost euclidean|sqeuclidean, variance > 0, separation > 0; got {self.params}")
        mp = torch.tensor([-sep / 2, 0.0], device=device, dtype=dtype)
        shift = torch.tensor([sep, 0.0], device=device, dtype=dtype)

        def draw_p(n: int, gen: torch.Generator) -> torch.Tensor:
            return mp + math.sqrt(var) * torch.randn(n, 2, generator=gen, device=device, dtype=dtype)

        def draw_q(n: int, gen: torch.Generator) -> torch.Tensor:
            return draw_p(n, gen) + shift

        def true_map(x: torch.Tensor) -> torch.Tensor:
            return x + shift.to(x.dtype)

        solver_p, solver_q, eval_p, eval_q = make_sampler_pair(draw_p, draw_q, seed, device)

        def sample_plan(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = eval_p(n)
            return x, true_map(x)

        critic_grad = None
        if cost == "euclidean":  # f(x) = -x_1 is an optimal W1 critic: E_P f - E_Q f = sep

            def critic_grad(x: torch.Tensor) -> torch.Tensor:
                g = torch.zeros_like(x)
                g[:, 0] = -1.0
                return g

        problem = Problem(kind="continuous", dim=2, cost=cost, device=device, dtype=dtype,
                          sample_p=solver_p, sample_q=solver_q, seed=seed)
        truth = Truth(distance=sep if cost == "euclidean" else sep**2, distance_se=0.0, critic_grad=critic_grad,
                      sample_p=eval_p, sample_q=eval_q, sample_plan=sample_plan, map=true_map,
                      extra={"var_q": 2 * var})
        return problem, truth


class SpotCurved(Task):
    """Seed-000/004 toy: N((-2.5, 0), 0.5 I) to (sin Y1 + Y2, 2 Y1 - 3); no closed form (marginal fit only)."""

    name = "spot_curved"
    kind = "continuous"
    primary_metric = ("plan_energy_ratio", "min")
    defaults = {"cost": "sqeuclidean", "p_variance": 0.5, "y2_variance": 0.1}

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        cost, pv, y2v = self.params["cost"], float(self.params["p_variance"]), float(self.params["y2_variance"])
        if cost not in ("euclidean", "sqeuclidean") or pv <= 0 or y2v < 0:
            raise InvalidInput(f"spot_curved needs cost euclidean|sqeuclidean, p_variance > 0, y2_variance >= 0; got {self.params}")
        mp = torch.tensor([-2.5, 0.0], device=device, dtype=dtype)

        def draw_p(n: int, gen: torch.Generator) -> torch.Tensor:
            return mp + math.sqrt(pv) * torch.randn(n, 2, generator=gen, device=device, dtype=dtype)

        def draw_q(n: int, gen: torch.Generator) -> torch.Tensor:
            y1 = 3.0 * torch.rand(n, generator=gen, device=device, dtype=dtype)
            y2 = 2.0 + math.sqrt(y2v) * torch.randn(n, generator=gen, device=device, dtype=dtype)
            return torch.stack([torch.sin(y1) + y2, 2.0 * y1 - 3.0], dim=1)

        solver_p, solver_q, eval_p, eval_q = make_sampler_pair(draw_p, draw_q, seed, device)
        problem = Problem(kind="continuous", dim=2, cost=cost, device=device, dtype=dtype,
                          sample_p=solver_p, sample_q=solver_q, seed=seed)
        # No distance, map or plan: none is known in closed form (see the module docstring).
        return problem, Truth(sample_p=eval_p, sample_q=eval_q)


@hookimpl
def otbench_register_tasks(register: Callable[[type], None]) -> None:
    for cls in (GaussianW2, ConvexMap, SpotGaussians, SpotCurved):
        register(cls)
