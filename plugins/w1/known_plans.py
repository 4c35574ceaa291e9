"""W1 pairs with a known optimal plan: the flagship task family.

Construction (Korotin, Kolesov, Burnaev, "Kantorovich Strikes Back!", NeurIPS 2022 D&B; seed 003, section 4.1):
take a potential ``u`` that is 1-Lipschitz with ``|grad u| = 1`` almost everywhere. For ``y ~ Q`` (uniform on the
box ``[-L, L]^D``) find the maximal segment ``[low, up]`` through ``y``, along ``w = grad u(y)`` and inside the box,
on which ``u`` grows with slope exactly 1. With ``t = |y - low| / |up - low|`` the moved point is
``x = low + t^p (up - low)``; it lies between ``low`` and ``y`` on that segment, so ``u(y) - u(x) = |x - y|``.
Since ``u`` is 1-Lipschitz this certifies that ``(x, y)`` is drawn from an optimal plan between ``P = law(x)`` and
``Q``: the true W1 is ``E|x - y|``, an optimal critic (maximising ``E_P f - E_Q f``) is ``f* = -u`` and its
gradient at ``x`` is ``-grad u(x)``.

Two independently constructed potentials:

- ``min_funnel``: ``u(x) = min_n |x - a_n| + b_n`` (the published benchmark). ``low`` is the active centre.
  Pairs are generated from ``pair_seed`` (``pairs: generated``), taken from the 28 published pairs shipped in
  ``published/pairs`` (``pairs: published``), or loaded from a parameter file (``pairs_file``, a torch
  state_dict with ``net.centers`` [N, D] and ``net.bias`` [N]; ``{dim}`` and ``{funnels}`` in the path are
  filled in from the task parameters).
- ``maxmin_net``: seed 003's strongly 1-Lipschitz network, ``u(x) = max_g min_j <w_gj, x> + c_gj`` with unit
  ``w_gj`` (max and min of strongly 1-Lipschitz functions stay strongly 1-Lipschitz, seed 003 Lemma 3.2). Its
  rays are parallel inside each linear region; ``low`` is a kink or the box face behind ``y``.

Numerics: everything is constructed in float64 (``t^p`` underflows in float32). A moved point is kept at least
``rho`` (a few ulps of the output dtype times the box size) away from ``low``, never past ``y``, so that a point
handed out in float32 is not rounded onto a funnel centre or across the kink where its gradient is undefined;
this moves a small share of points by at most ``rho`` (W1 changes by far less than its Monte Carlo error).

Every potential passes a certificate before use (``u(y) - u(x) = |x - y|`` on the Monte Carlo plan pairs,
``|grad u| = 1`` by autograd, and ``|u(a) - u(b)| <= |a - b|`` on random pairs); a failure raises
``CertificateError``. The truth keeps the W1 (with standard error), the critic gradient, plan samples, and the
energy-distance lower bound and mean-distance upper bound of seed 003 Lemma 3.5 in ``truth.extra``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otbench import Problem, Task, Truth, hookimpl
from otbench.api import InvalidInput, OTBenchError
from otbench.sampling import derive_seed, make_generator, make_sampler_pair

F64 = torch.float64
_CHUNK = 4096
_CERTIFIED = 16384  # plan pairs checked against the certificate at build time


class CertificateError(OTBenchError):
    """A generated pair failed its optimality certificate: it must not be used as a benchmark."""


def degeneracy_radius(dtype: torch.dtype, box: float, dim: int) -> float:
    """Smallest distance kept between a moved point and the start of its ray (see module docstring)."""
    return 256.0 * torch.finfo(dtype).eps * max(1.0, float(box)) * math.sqrt(dim)


def _box_exit(y: torch.Tensor, w: torch.Tensor, box: float) -> torch.Tensor:
    """Distance from ``y`` (inside ``[-box, box]^D``) along unit ``w`` to the box boundary, per row."""
    steps = (torch.copysign(torch.full_like(w, box), w).sub_(y)).div_(w)  # w_i = 0 gives +-inf or nan
    steps.masked_fill_(w == 0, math.inf)
    return steps.clamp_min_(0.0).amin(dim=1)


class RayPotential:
    """A potential with ``|grad u| = 1`` a.e. that can find its transport segment through any point."""

    dim: int
    box: float
    power: float

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """``u(x)`` in float64, ``[n, D] -> [n]``."""
        raise NotImplementedError

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """``grad u(x)`` in float64 (a unit vector, except exactly on a singular point)."""
        raise NotImplementedError

    def autograd_value(self, x: torch.Tensor) -> torch.Tensor:
        """``u(x)`` written with differentiable torch ops only (used by the certificate)."""
        raise NotImplementedError

    def segments(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """For float64 ``y`` in the box: ``(u(y), w, back, ahead, low)`` with ``w`` the unit ray direction,
        ``u`` linear with slope 1 on ``[y - back w, y + ahead w]`` (inside the box) and ``low = y - back w``."""
        raise NotImplementedError

    def to(self, device: torch.device) -> "RayPotential":
        """Move every tensor parameter to ``device`` (in place); returns ``self``."""
        for attr, val in list(vars(self).items()):
            if isinstance(val, torch.Tensor):
                setattr(self, attr, val.to(device))
        return self

    # ---- sampling -------------------------------------------------------------------------------------------
    def draw_q(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``y ~ Q = Uniform([-L, L]^D)`` in float64."""
        u = torch.rand(n, self.dim, generator=gen, device=gen.device, dtype=F64)
        return (2.0 * u - 1.0) * self.box

    def move(self, y: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Map base points ``y ~ Q`` to their plan partners ``x ~ P``; returns ``(x, u(y))`` in float64."""
        parts_x, parts_u = [], []
        for start in range(0, y.shape[0], _CHUNK):
            yc = y[start:start + _CHUNK]
            uy, w, back, ahead, low = self.segments(yc)
            total = back + ahead
            t = torch.where(total > 0, back / torch.where(total > 0, total, 1.0), torch.zeros_like(total))
            from_low = t.pow(self.power) * total
            # keep at least rho from the ray's start, but never move past y itself
            from_low = torch.maximum(from_low, torch.clamp(back, max=rho)).clamp(max=back)
            parts_x.append(low + from_low[:, None] * w)
            parts_u.append(uy)
        return torch.cat(parts_x), torch.cat(parts_u)

    def sample_plan(self, n: int, gen: torch.Generator, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` pairs ``(x, y)`` of the optimal plan, float64."""
        y = self.draw_q(n, gen)
        x, _ = self.move(y, rho)
        return x, y


# ---------------------------------------------------------------------------------------------------------------
class MinFunnel(RayPotential):
    """``u(x) = min_n |x - a_n| + b_n``: funnels with centres ``a`` [N, D] and offsets ``b`` [N]."""

    def __init__(self, centres: torch.Tensor, offsets: torch.Tensor, box: float, power: float) -> None:
        if centres.ndim != 2 or offsets.shape != (centres.shape[0],):
            raise InvalidInput(f"min_funnel: centres must be [N, D] and offsets [N]; got {tuple(centres.shape)} "
                               f"and {tuple(offsets.shape)}")
        if not (torch.isfinite(centres).all() and torch.isfinite(offsets).all()):
            raise InvalidInput("min_funnel: centres and offsets must be finite")
        if (centres.abs() > box).any():
            raise InvalidInput(f"min_funnel: every funnel centre must lie in the box [-{box}, {box}]^D")
        self.centres = centres.to(F64)
        self.offsets = offsets.to(F64)
        self.sq_norms = (self.centres ** 2).sum(1)
        self.dim = int(centres.shape[1])
        self.box, self.power = float(box), float(power)

    def _sq_dists(self, x: torch.Tensor) -> torch.Tensor:
        d2 = (x ** 2).sum(1, keepdim=True) + self.sq_norms[None, :] - 2.0 * x @ self.centres.T
        return d2.clamp_min(0.0)

    def active(self, x: torch.Tensor) -> torch.Tensor:
        return (self._sq_dists(x).sqrt() + self.offsets).argmin(dim=1)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(F64)
        k = self.active(x)
        return (x - self.centres[k]).norm(dim=1) + self.offsets[k]

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(F64)
        diff = x - self.centres[self.active(x)]
        return diff / diff.norm(dim=1, keepdim=True).clamp_min(1e-300)

    def autograd_value(self, x: torch.Tensor) -> torch.Tensor:
        return ((x[:, None, :] - self.centres[None]).norm(dim=2) + self.offsets).amin(dim=1)

    def segments(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dist = self._sq_dists(y).sqrt_()                          # |y - a_m|, [n, N]
        k = (dist + self.offsets).argmin(dim=1)
        low = self.centres[k]
        diff = y - low
        back = diff.norm(dim=1)
        v = diff / back[:, None].clamp_min(1e-300)
        uy = back + self.offsets[k]
        # The ray y + r v (r > 0) leaves funnel k's region where a funnel m takes over:
        # |y + r v - a_m| + b_m = u(y) + r. With da = y - a_m, db = u(y) - b_m (<= |da|) the left side minus the
        # right side falls monotonically from |da| - db >= 0 towards <da, v> - db, so a crossing exists iff
        # den = db - <da, v> > 0, at r = (|da|^2 - db^2) / (2 den).
        db = uy[:, None] - self.offsets[None, :]
        den = (v @ self.centres.T).sub_((y * v).sum(1, keepdim=True)).add_(db)   # db - <y - a_m, v>
        num = (dist - db).mul_(dist.add_(db))                     # |da|^2 - db^2, computed without cancellation
        r = num.div_(den.mul(2.0)).clamp_min_(0.0)
        r.masked_fill_(den <= 1e-12, math.inf)
        r.scatter_(1, k[:, None], math.inf)
        ahead = torch.minimum(r.amin(dim=1), _box_exit(y, v, self.box))
        return uy, v, back, ahead, low  # x is placed from the centre itself: exact near it


class MaxMinNet(RayPotential):
    """Seed 003's strongly 1-Lipschitz net: ``u(x) = max_g min_j <w_gj, x> + c_gj`` with ``|w_gj| = 1``."""

    def __init__(self, weights: torch.Tensor, offsets: torch.Tensor, box: float, power: float) -> None:
        if weights.ndim != 3 or offsets.shape != weights.shape[:2]:
            raise InvalidInput(f"maxmin_net: weights must be [G, J, D] and offsets [G, J]; got "
                               f"{tuple(weights.shape)} and {tuple(offsets.shape)}")
        self.groups, self.group_size, self.dim = (int(s) for s in weights.shape)
        self.weights = weights.to(F64).reshape(-1, self.dim)  # [K, D], leaf k = g * J + j
        self.offsets = offsets.to(F64).reshape(-1)
        self.gram = self.weights @ self.weights.T
        self.box, self.power = float(box), float(power)

    def _leaves(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.weights.T + self.offsets).reshape(x.shape[0], self.groups, self.group_size)

    def active(self, x: torch.Tensor) -> torch.Tensor:
        leaves = self._leaves(x)
        mins, j = leaves.min(dim=2)
        g = mins.argmax(dim=1)
        return g * self.group_size + j.gather(1, g[:, None]).squeeze(1)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self._leaves(x.to(F64)).amin(dim=2).amax(dim=1)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return self.weights[self.active(x.to(F64))]

    def autograd_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(x)

    def segments(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n, G, J = y.shape[0], self.groups, self.group_size
        leaves = self._leaves(y)                              # alpha: leaf values at y
        group_min = leaves.amin(dim=2)
        uy = group_min.amax(dim=1)
        k = self.active(y)
        w = self.weights[k]
        beta = self.gram[k].reshape(n, G, J)                  # slope of each leaf along w
        tol = 1e-12 * (1.0 + uy.abs())[:, None, None]
        gap = (leaves - uy[:, None, None])                    # alpha - u(y)
        slack = 1.0 - beta                                    # >= 0
        flat = slack <= 1e-12
        safe = torch.where(flat, torch.ones_like(slack), slack)
        inf = torch.full_like(gap, math.inf)
        # Ahead (s > 0): group g keeps u(y) + s while every leaf j has alpha_j - u0 >= (1 - beta_j) s.
        r = torch.where(flat, torch.where(gap >= -tol, inf, torch.zeros_like(gap)), gap / safe).clamp_min(0.0)
        group_ahead = r.amin(dim=2)
        group_ahead = torch.where(group_min >= uy[:, None] - tol[:, :, 0], group_ahead, torch.zeros_like(group_ahead))
        ahead = group_ahead.amax(dim=1)
        # Behind (sigma > 0): u(y - sigma w) = u0 - sigma while every group has a leaf with
        # alpha_j - u0 <= (beta_j - 1) sigma, i.e. sigma <= (u0 - alpha_j) / (1 - beta_j).
        q = torch.where(flat, torch.where(-gap >= -tol, inf, -inf), -gap / safe)
        behind = q.amax(dim=2).amin(dim=1).clamp_min(0.0)
        ahead = torch.minimum(ahead, _box_exit(y, w, self.box))
        behind = torch.minimum(behind, _box_exit(y, -w, self.box))
        return uy, w, behind, ahead, y - behind[:, None] * w


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class TruthStats:
    w1: float
    w1_se: float
    lower_energy: float
    lower_energy_se: float
    upper_mean_distance: float
    upper_se: float
    certificate_residual: float
    certificate_grad_dev: float
    samples: int


def certify(pot: RayPotential, x: torch.Tensor, y: torch.Tensor, uy: torch.Tensor | None = None,
            n_grad: int = 256, gen: torch.Generator | None = None, tol: float = 1e-8) -> tuple[float, float]:
    """Check the optimality certificate on float64 plan pairs; return ``(max residual, max | |grad u| - 1 |)``.

    Raises ``CertificateError`` when ``u(y) - u(x) = |x - y|`` or ``|grad u| = 1`` fails beyond ``tol``, or when
    ``u`` is not 1-Lipschitz on random pairs in the box.
    """
    x, y = x.to(F64), y.to(F64)
    uy = pot.value(y) if uy is None else uy
    scale = 1.0 + uy.abs()
    residual = float(((uy - pot.value(x) - (x - y).norm(dim=1)).abs() / scale).max())
    gen = gen if gen is not None else make_generator(0, x.device)
    pts = torch.cat([x[:n_grad], y[:n_grad]]).detach().clone()
    grads = []
    for start in range(0, pts.shape[0], 64):
        p = pts[start:start + 64].requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(pot.autograd_value(p).sum(), p)
        grads.append(g)
    grad_dev = float((torch.cat(grads).norm(dim=1) - 1.0).abs().max())
    a, b = pot.draw_q(2048, gen), pot.draw_q(2048, gen)
    lip_excess = float(((pot.value(a) - pot.value(b)).abs() - (a - b).norm(dim=1)).max())
    if not (residual <= tol and grad_dev <= 1e-6 and lip_excess <= tol * (1 + pot.box * pot.dim)):
        raise CertificateError(
            f"pair certificate failed: max |u(y) - u(x) - |x - y|| / (1 + |u|) = {residual:.3g} (tol {tol:g}), "
            f"max ||grad u| - 1| = {grad_dev:.3g}, max Lipschitz excess = {lip_excess:.3g}"
        )
    return residual, grad_dev


def truth_stats(pot: RayPotential, n: int, seed: int, device: torch.device, rho: float) -> TruthStats:
    """Monte Carlo truth over ``n`` plan pairs (W1 = E|x - y|; Lemma 3.5 bounds), after the certificate."""
    gen = make_generator(seed, device)
    n = max(int(n), 1024)
    cost, ipq, ipp, iqq = [], [], [], []
    residual = 0.0
    grad_dev = 0.0
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        y = pot.draw_q(m, gen)
        x, uy = pot.move(y, rho)
        if start == 0:
            residual, grad_dev = certify(pot, x, y, uy, gen=gen)
        elif start < _CERTIFIED:
            residual = max(residual, certify_pairs_only(pot, x, y, uy))
        cost.append((x - y).norm(dim=1))
        # Lemma 3.5 integrals from independent partners (row i against row i+1 of the same chunk)
        ipq.append((x - y.roll(1, 0)).norm(dim=1))
        ipp.append((x - x.roll(1, 0)).norm(dim=1))
        iqq.append((y - y.roll(1, 0)).norm(dim=1))
    c, a, pp, qq = (torch.cat(v) for v in (cost, ipq, ipp, iqq))
    energy = a - 0.5 * (pp + qq)

    def se(v: torch.Tensor) -> float:
        return float(v.std() / math.sqrt(v.numel()))

    return TruthStats(w1=float(c.mean()), w1_se=se(c), lower_energy=float(energy.mean()), lower_energy_se=se(energy),
                      upper_mean_distance=float(a.mean()), upper_se=se(a), certificate_residual=residual,
                      certificate_grad_dev=grad_dev, samples=int(c.numel()))


def certify_pairs_only(pot: RayPotential, x: torch.Tensor, y: torch.Tensor, uy: torch.Tensor,
                       tol: float = 1e-8) -> float:
    residual = float(((uy - pot.value(x) - (x - y).norm(dim=1)).abs() / (1.0 + uy.abs())).max())
    if not residual <= tol:
        raise CertificateError(f"pair certificate failed: max |u(y) - u(x) - |x - y|| / (1 + |u|) = {residual:.3g}")
    return residual


# ---------------------------------------------------------------------------------------------------------------
_CACHE: OrderedDict[Hashable, Any] = OrderedDict()
_CACHE_SIZE = 16


def _cached(key: Hashable, make: Callable[[], Any]) -> Any:
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = make()
    _CACHE[key] = value
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


def _check_common(params: dict[str, Any], name: str) -> tuple[int, float, float]:
    dim, box, power = params["dim"], params["box"], params["power"]
    if int(dim) != dim or int(dim) < 1:
        raise InvalidInput(f"{name}: dim must be a positive integer, got {dim!r}")
    if not (float(box) > 0 and math.isfinite(float(box))):
        raise InvalidInput(f"{name}: box must be a positive half-width, got {box!r}")
    if not (float(power) >= 1 and math.isfinite(float(power))):
        raise InvalidInput(f"{name}: power must be >= 1, got {power!r}")
    if int(params["truth_samples"]) < 1024:
        raise InvalidInput(f"{name}: truth_samples must be >= 1024, got {params['truth_samples']!r}")
    return int(dim), float(box), float(power)


class _KnownPlanTask(Task):
    kind = "continuous"
    # Ranked by the gradient L2 error: it says whether the solver found the optimal critic (W1 error alone
    # rewards cancellation) and applies to critics, maps and plan samples alike.
    primary_metric = ("grad_l2", "min")

    def potential(self, device: torch.device | str = "cpu") -> RayPotential:
        """The (cached) potential ``u`` of this pair, on ``device``; ``f* = -u`` is an optimal critic."""
        device = torch.device(device)
        return _cached((type(self).__name__, "pot", self._pair_key(), str(device)),
                       lambda: self._make_potential().to(device))

    def _pair_key(self) -> Hashable:
        return tuple(sorted((k, v) for k, v in self.params.items() if k != "truth_samples"))

    def _make_potential(self) -> RayPotential:
        raise NotImplementedError

    def _truth_seed(self) -> int:
        return derive_seed(int(self.params.get("pair_seed", 0)), self.name, "truth")

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        device = torch.device(device)
        pot = self.potential(device)
        rho = degeneracy_radius(dtype, pot.box, pot.dim)
        n_truth = int(self.params["truth_samples"])
        stats: TruthStats = _cached(
            (type(self).__name__, "truth", self._pair_key(), str(device), rho, n_truth),
            lambda: truth_stats(pot, n_truth, self._truth_seed(), device, rho))

        def draw_p(n: int, gen: torch.Generator) -> torch.Tensor:
            x, _ = pot.move(pot.draw_q(n, gen), rho)
            return x.to(dtype)

        def draw_q(n: int, gen: torch.Generator) -> torch.Tensor:
            return pot.draw_q(n, gen).to(dtype)

        solver_p, solver_q, eval_p, eval_q = make_sampler_pair(draw_p, draw_q, seed, device)
        plan_gen = make_generator(derive_seed(seed, "eval", "plan"), device)

        def sample_plan(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = pot.sample_plan(int(n), plan_gen, rho)
            return x.to(dtype), y.to(dtype)

        def critic_grad(x: torch.Tensor) -> torch.Tensor:
            """Gradient of the optimal critic f* = -u at ``x``."""
            return (-pot.grad(x.to(device=device, dtype=F64))).to(dtype=x.dtype, device=x.device)

        problem = Problem(kind="continuous", dim=pot.dim, cost="euclidean", device=device, dtype=dtype,
                          sample_p=solver_p, sample_q=solver_q, seed=seed,
                          info={"family": self.name, "box": pot.box})
        truth = Truth(distance=stats.w1, distance_se=stats.w1_se, critic_grad=critic_grad, sample_p=eval_p,
                      sample_q=eval_q, sample_plan=sample_plan,
                      extra={"w1_lower_energy": stats.lower_energy, "w1_lower_energy_se": stats.lower_energy_se,
                             "w1_upper_mean_distance": stats.upper_mean_distance,
                             "w1_upper_mean_distance_se": stats.upper_se,
                             "certificate_residual": stats.certificate_residual,
                             "certificate_grad_dev": stats.certificate_grad_dev,
                             "truth_samples": float(stats.samples)})
        return problem, truth


#: the published pair files shipped with this package (Korotin et al. 2022; MIT licence in published/LICENSE.md)
PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
PUBLISHED_GRID = frozenset((d, n) for d in (2, 4, 8, 16, 32, 64, 128) for n in (4, 16, 64, 256))


def load_funnel_file(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a published MinFunnel parameter file: ``(centres [N, D], offsets [N])`` in float64."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidInput(f"min_funnel: pairs_file {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"net.centers", "net.bias"} - set(state)
    if missing:
        raise InvalidInput(f"min_funnel: pairs_file {str(path)!r} lacks {sorted(missing)}; has {sorted(state)}")
    return state["net.centers"].to(F64), state["net.bias"].to(F64)


def published_pair_file(dim: int, funnels: int) -> Path:
    """The shipped parameter file of the published pair ``(dim, funnels)`` (Korotin et al. 2022, MIT licence;
    see ``published/README.md``); ``InvalidInput`` naming the published grid for any other pair."""
    if (int(dim), int(funnels)) not in PUBLISHED_GRID:
        raise InvalidInput(
            f"min_funnel: pairs='published' has no pair for dim={dim}, funnels={funnels}; the published set is "
            f"dim in {sorted({d for d, _ in PUBLISHED_GRID})} x funnels in {sorted({n for _, n in PUBLISHED_GRID})}")
    path = PUBLISHED_DIR / "pairs" / f"dim_{int(dim)}_width_{int(funnels)}.pt"
    if not path.is_file():  # a broken installation, not a user error
        raise OTBenchError(f"min_funnel: the shipped published pair file {str(path)!r} is missing")
    return path


class MinFunnelPair(_KnownPlanTask):
    """MinFunnel W1 pair with a known optimal plan (Korotin et al. 2022): generated from a seed or loaded.

    ``pairs``: ``"generated"`` (default: centres and offsets drawn from ``pair_seed``) or ``"published"`` (the
    authors' 28 pair files for D in {2, 4, ..., 128} x N in {4, 16, 64, 256}, shipped in ``published/pairs``
    with their MIT licence; ``pair_seed`` and ``offset_scale`` are then unused, and a (dim, funnels) outside
    that grid is an error). ``pairs_file`` (a path, ``{dim}`` / ``{funnels}`` filled in; only with
    ``pairs="generated"``) loads any other file of the same format instead of generating. Only published
    pairs have published reference metrics (``published``); generated pairs are other pairs, with none.
    """

    name = "min_funnel"
    defaults = {"dim": 2, "funnels": 4, "pairs": "generated", "pair_seed": 0, "pairs_file": None, "box": 2.5,
                "power": 8, "offset_scale": 0.1, "truth_samples": 131072}

    def _pairs_mode(self) -> str:
        mode = self.params["pairs"]
        if mode not in ("generated", "published"):
            raise InvalidInput(f"min_funnel: pairs must be 'generated' or 'published', got {mode!r}")
        if mode == "published" and self.params["pairs_file"]:
            raise InvalidInput("min_funnel: give either pairs='published' or a pairs_file, not both")
        if mode == "published" and (float(self.params["box"]) != 2.5 or float(self.params["power"]) != 8):
            raise InvalidInput(f"min_funnel: the published pairs use box=2.5 and power=8; got box="
                               f"{self.params['box']!r}, power={self.params['power']!r}")
        return mode

    def published(self, solver: str, solver_params: dict[str, Any]) -> dict[str, Any] | None:
        """The authors' per-cell metrics of the like-for-like published method, for published pairs only."""
        if self.params["pairs"] != "published" or self.params["pairs_file"]:
            return None
        from otbench_plugins.w1.published_metrics import published_reference
        return published_reference(int(self.params["dim"]), int(self.params["funnels"]), solver, solver_params)

    def _make_potential(self) -> MinFunnel:
        dim, box, power = _check_common(self.params, self.name)
        funnels = self.params["funnels"]
        if int(funnels) != funnels or int(funnels) < 1:
            raise InvalidInput(f"min_funnel: funnels must be a positive integer, got {funnels!r}")
        funnels = int(funnels)
        if self._pairs_mode() == "published":
            centres, offsets = load_funnel_file(published_pair_file(dim, funnels))
        elif self.params["pairs_file"]:
            # plain substitution, not str.format: a format field like {dim.__class__} must not be evaluated
            path = str(self.params["pairs_file"]).replace("{dim}", str(dim)).replace("{funnels}", str(funnels))
            centres, offsets = load_funnel_file(path)
            if tuple(centres.shape) != (funnels, dim):
                raise InvalidInput(f"min_funnel: pairs_file {path!r} holds {centres.shape[0]} funnels in dimension "
                                   f"{centres.shape[1]}, but the task asks for funnels={funnels}, dim={dim}")
        else:
            rng = np.random.default_rng(derive_seed(int(self.params["pair_seed"]), self.name, dim, funnels))
            centres = torch.from_numpy(rng.uniform(-box, box, size=(funnels, dim)))
            offsets = torch.from_numpy(float(self.params["offset_scale"]) * rng.standard_normal(funnels))
        return MinFunnel(centres, offsets, box, power)


class MaxMinNetPair(_KnownPlanTask):
    """W1 pair from seed 003's strongly 1-Lipschitz max-min network (|grad u| = 1 a.e.), same ray plan."""

    name = "maxmin_net"
    defaults = {"dim": 2, "groups": 4, "group_size": 4, "pair_seed": 0, "box": 2.5, "power": 8,
                "truth_samples": 131072}

    def _make_potential(self) -> MaxMinNet:
        dim, box, power = _check_common(self.params, self.name)
        groups, size = self.params["groups"], self.params["group_size"]
        if int(groups) != groups or int(size) != size or int(groups) < 1 or int(size) < 1:
            raise InvalidInput(f"maxmin_net: groups and group_size must be positive integers, got {groups!r}, {size!r}")
        groups, size = int(groups), int(size)
        rng = np.random.default_rng(derive_seed(int(self.params["pair_seed"]), self.name, dim, groups, size))
        w = rng.standard_normal((groups, size, dim))
        w /= np.linalg.norm(w, axis=2, keepdims=True)
        # each piece's zero level set passes through a random point of the box, so that pieces are active there
        anchors = rng.uniform(-box, box, size=(groups, size, dim))
        offsets = -(w * anchors).sum(axis=2)
        return MaxMinNet(torch.from_numpy(w), torch.from_numpy(offsets), box, power)


@hookimpl
def otbench_register_tasks(register: Callable[[type], None]) -> None:
    register(MinFunnelPair)
    register(MaxMinNetPair)
