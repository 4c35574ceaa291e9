"""OT generators: generative models trained through an optimal-transport loss (no dual critic of W1).

Four solvers for ``generative`` problems (``sample_p`` draws the latent, ``sample_q`` the training data). Each
returns a ``generator``: ``n -> [n, dim]`` flat samples ``G(z)`` with ``z`` drawn from the problem's own latent
sampler, so the same seed gives the same stream and successive calls give fresh samples. Image problems get a
sigmoid output scaled onto ``problem.value_range``.

- ``ot_gan`` (Salimans et al. 2018; seed 001): a critic ``v`` maps points to L2-normalised features, the cost is
  the cosine distance ``c(x, y) = 1 - <v(x), v(y)>`` and ``W(X, Y) = <M, C>`` with ``M`` the entropic plan
  computed by log-domain Sinkhorn (``sinkhorn_iters`` fixed iterations, differentiable: autodiff through the
  iterations by default, or the envelope gradient with ``M`` held fixed). The loss is the mini-batch energy
  distance over two independent real half-batches ``X, X'`` and two generated ``Y, Y'``::

      L = W(X,Y) + W(X,Y') + W(X',Y) + W(X',Y') - 2 W(X,X') - 2 W(Y,Y')

  The generator descends ``L``, the critic ascends it; of every ``gen_per_critic + 1`` updates one is a critic
  update (seed 001 Algorithm 1, ``n_gen = 4``). Adam 3e-4, betas (0.5, 0.999) for both nets. ``batch_size`` is
  the *total* real batch as in seed 001 (each half-batch holds ``batch_size / 2``; seed 001: 512 works, 32
  fails); the generator draws the same number of points.
- ``sinkhorn_generator`` / ``ipot_generator`` (minimum Kantorovich estimator; seed 004 section 2.4.3): each step
  draws a generated batch ``G(z)`` and a data batch ``x``, computes the plan ``P*`` of ``C = c(G(z), x)`` with
  ``plugins/discrete/entropic.py``'s ``sinkhorn_solve`` (``epsilon``) or ``ipot_solve`` (``beta``,
  ``inner_iters``; its certified stopping rule) on the detached cost in float64, and descends
  ``<P*, C(G(z), x)>``. By the envelope theorem this is the gradient of the (entropic) OT cost: no gradient
  flows through the iterations. Seed 004's MNIST setting: latent R^2 -> R^784, batch 200, one hidden layer of
  500, lr 1e-4, 200 solver iterations; Sinkhorn at eps = 1 covered 6 of 10 digits, IPOT at beta = 1 all 10.
  The cost is the problem's ground cost, unnormalised (seed 004's), unless ``normalize_cost`` divides it by
  its maximum before the plan is computed (the loss always uses the raw cost).
- ``spot_generator`` (seed 004 eq. 3.7 / Algorithm 3 with the latent measure as the P side): SPOT couples two
  measures through ``z -> (G_X(z), G_Y(z))``. Here the P side *is* the latent, so ``G_X`` is the identity (its
  marginal is exact and needs no critic) and ``G_Y = G`` is the generator::

      min_G max_{lambda in Lip_1}  w E c(z, G(z)) + eta (E lambda(G(z)) - E_Q lambda(y))

  with ``n_critic`` ascent steps on the spectrally normalised (or clipped) critic per generator step, reusing
  ``plugins/maps/spot.py``'s critic, gap and learning-rate schedule. The transport term needs the latent and
  the data in one space: ``transport_weight`` (``None`` = 1 when ``latent_dim == dim``, else 0) makes ``G`` the
  SPOT (Monge) map from the latent to the data; with weight 0 (images) the objective is SPOT's marginal
  critic game alone, i.e. a spectrally normalised WGAN with SPOT's training recipe.

Networks come from ``plugins/generative/nets.py`` (shared with the WGAN / DCGAN generators, so the suite compares
losses, not architectures): ``arch: mlp`` (seed 004's one-hidden-layer generator for the plan generators, SPOT's
critic stays its spectrally normalised MLP) or ``arch: conv`` (DCGAN-style; OT-GAN's ``auto`` picks it for images;
seed 001's GLU / CReLU nets are not reproduced). Nets are initialised under seeds derived from the problem's seed.

Every solver records ``trace`` checkpoints ``{"iteration", "time", "loss", ...}`` every ``trace_every`` steps.
Training pairwise costs use the matrix-product form (|x|^2 + |y|^2 - 2 <x, y>, clamped at 0): the
difference form of ``otbench.costs`` builds an ``[n, m, dim]`` tensor (125 MB per 200 x 200 MNIST batch); the
product form's cancellation error (about 1e-7 |x|^2 in float32) matters only for near-coincident pairs and is
harmless to a training gradient.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from otbench import Problem, Solution, Solver, hookimpl
from otbench.api import InvalidInput, SolverDidNotConverge
from otbench.sampling import derive_seed
from otbench_plugins.discrete.entropic import SINKHORN_METHODS, DiscreteResult, ipot_solve, sinkhorn_solve
from otbench_plugins.generative.nets import ARCHS, generator_stream, make_feature_net, make_generator_net, seeded_init
from otbench_plugins.maps.spot import clip_weights, cosine_lr_factor, critic_gap, lipschitz_critic

__all__ = [
    "sinkhorn_log",
    "entropic_cost",
    "cosine_cost",
    "minibatch_energy_distance",
    "train_cost",
    "train_cost_paired",
    "OTGAN",
    "SinkhornGenerator",
    "IPOTGenerator",
    "SPOTGenerator",
    "OT_GENERATORS",
]


# ----------------------------------------------------------------------------------------------------------
# parameter checks


def _int_param(name: str, p: dict[str, Any], key: str, minimum: int = 1) -> int:
    value = p[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < minimum:
        raise InvalidInput(f"{name}: parameter {key!r} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _float_param(name: str, p: dict[str, Any], key: str, minimum: float = 0.0, inclusive: bool = False) -> float:
    value = p[key]
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name}: parameter {key!r} must be a number, got {value!r}") from None
    ok = math.isfinite(v) and (v >= minimum if inclusive else v > minimum)
    if isinstance(value, bool) or not ok:
        sign = ">=" if inclusive else ">"
        raise InvalidInput(f"{name}: parameter {key!r} must be a finite number {sign} {minimum:g}, got {value!r}")
    return v


def _betas(name: str, p: dict[str, Any]) -> tuple[float, float]:
    betas = p["betas"]
    try:
        b1, b2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name}: parameter 'betas' must be two numbers in [0, 1), got {betas!r}") from None
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise InvalidInput(f"{name}: parameter 'betas' must be two numbers in [0, 1), got {betas!r}")
    return b1, b2


# ----------------------------------------------------------------------------------------------------------
# OT numerics


def train_cost(x: torch.Tensor, y: torch.Tensor, cost: str) -> torch.Tensor:
    """Differentiable cost matrix ``[n, m]`` for training (matrix-product form; see the module notes).

    The Euclidean root is taken of the squared distance clamped at the smallest normal number, so that its
    derivative stays finite where a generated point coincides with a data point.
    """
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    sq = sq.clamp_min(0.0)
    if cost == "sqeuclidean":
        return sq
    if cost == "euclidean":
        return sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt()
    raise InvalidInput(f"unknown cost {cost!r}; the OT generators support 'euclidean' and 'sqeuclidean'")


def train_cost_paired(z: torch.Tensor, y: torch.Tensor, cost: str) -> torch.Tensor:
    """Mean ``c(z_i, y_i)`` of paired points (NaN-free derivative at coincident points for the Euclidean cost)."""
    sq = ((z - y) ** 2).sum(1)
    if cost == "sqeuclidean":
        return sq.mean()
    return sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt().mean()


def sinkhorn_log(cost: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Entropic plans between uniform weights by ``iterations`` log-domain Sinkhorn steps, differentiable in ``cost``.

    ``cost`` is ``[n, m]`` or a batch ``[..., n, m]`` (one plan per matrix, all iterated together: on a CPU the
    per-operation overhead of small matrices dominates, so OT-GAN's six W run as one batch). Each step sets
    ``f_i = -eps (log sum_j exp((g_j - C_ij) / eps) + log n)`` then the same for ``g``; the plan is
    ``exp((f_i + g_j - C_ij) / eps)`` (its columns sum to ``1 / m`` exactly, its rows approximately).
    """
    n, m = cost.shape[-2:]
    log_a, log_b = -math.log(n), -math.log(m)
    scaled = cost / epsilon
    f = cost.new_zeros(cost.shape[:-1])   # f / eps
    g = cost.new_zeros(cost.shape[:-2] + (m,))  # g / eps
    for _ in range(int(iterations)):
        f = log_a - torch.logsumexp(g.unsqueeze(-2) - scaled, dim=-1)
        g = log_b - torch.logsumexp(f.unsqueeze(-1) - scaled, dim=-2)
    return torch.exp(f.unsqueeze(-1) + g.unsqueeze(-2) - scaled)


def entropic_cost(cost: torch.Tensor, epsilon: float, iterations: int, grad: str = "autodiff") -> torch.Tensor:
    """``W_c = <M, C>`` with ``M`` the log-domain Sinkhorn plan of ``C`` (seed 001's W_c); ``[..., n, m] -> [...]``.

    ``grad="autodiff"`` differentiates through the Sinkhorn iterations; ``"envelope"`` holds ``M`` fixed.
    """
    if grad == "envelope":
        with torch.no_grad():
            plan = sinkhorn_log(cost.detach(), epsilon, iterations)
    else:
        plan = sinkhorn_log(cost, epsilon, iterations)
    return (plan * cost).sum((-2, -1))


def cosine_cost(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``1 - <u_i, v_j>`` for L2-normalised feature rows ``[..., n, k]``, ``[..., m, k]`` -> ``[..., n, m]``."""
    return 1.0 - u @ v.transpose(-2, -1)


def minibatch_energy_distance(fx: torch.Tensor, fx2: torch.Tensor, fy: torch.Tensor, fy2: torch.Tensor,
                              epsilon: float, iterations: int,
                              grad: str = "autodiff") -> tuple[torch.Tensor, dict[str, float]]:
    """OT-GAN's loss on L2-normalised features ``[..., half, k]`` of real ``X, X'`` and generated ``Y, Y'``.

    ``W(X,Y) + W(X,Y') + W(X',Y) + W(X',Y') - 2 W(X,X') - 2 W(Y,Y')`` with the cosine cost, the six ``W`` solved
    as one batch. Returns the loss (shape ``[...]``) and the mean ``W(X,Y)``, ``W(X,X')``, ``W(Y,Y')`` (floats).
    """
    left = torch.stack([fx, fx, fx2, fx2, fx, fy])
    right = torch.stack([fy, fy2, fy, fy2, fx2, fy2])
    w = entropic_cost(cosine_cost(left, right), epsilon, iterations, grad)
    loss = w[0] + w[1] + w[2] + w[3] - 2.0 * w[4] - 2.0 * w[5]
    parts = {"w_xy": float(w[0].detach().mean()), "w_xx": float(w[4].detach().mean()),
             "w_yy": float(w[5].detach().mean())}
    return loss, parts


# ----------------------------------------------------------------------------------------------------------
# networks: the shared ones of plugins/generative/nets.py


class _Normalize(nn.Module):
    """Rows onto the unit sphere (OT-GAN's L2-normalised critic features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.reshape(x.shape[0], -1), dim=1)


def _arch(name: str, p: dict[str, Any], problem: Problem) -> str:
    arch = p["arch"]
    if arch not in ("auto",) + ARCHS:
        raise InvalidInput(f"{name}: parameter 'arch' must be one of {('auto',) + ARCHS}, got {arch!r}")
    if arch == "conv" and not problem.is_image:
        raise InvalidInput(f"{name}: arch='conv' needs image points [C, H, W], got shape {problem.sample_shape}")
    if arch == "auto":
        return "conv" if problem.is_image else "mlp"
    return arch


def _init(problem: Problem, solver: str, role: str, build: Callable[[], nn.Module]) -> nn.Module:
    """A net built under a seed derived from the problem's seed, on the problem's device and dtype."""
    net = seeded_init(derive_seed(problem.seed, solver, role), build)
    return net.to(problem.device, problem.dtype)


# ----------------------------------------------------------------------------------------------------------
# shared solver plumbing


class _GenerativeSolver(Solver):
    kinds = frozenset({"generative"})
    provides = frozenset({"generator"})
    threads = 1

    def _trace_point(self, trace: list[dict[str, float]], it: int, total: int, start: float, **values: float) -> None:
        every = _int_param(self.name, self.params, "trace_every")
        if it % every == 0 or it == total:
            trace.append({"iteration": float(it), "time": time.perf_counter() - start, **values})

    @staticmethod
    def _generator(net: nn.Module, problem: Problem) -> Callable[[int], torch.Tensor]:
        """``n -> G(z)`` over the problem's latent stream, with the weights training ended with."""
        return generator_stream(net, problem.sample_p)


# ----------------------------------------------------------------------------------------------------------
# OT-GAN


class OTGAN(_GenerativeSolver):
    """OT-GAN (Salimans et al. 2018): mini-batch energy distance of log-Sinkhorn costs on learned cosine features."""

    name = "ot_gan"
    costs = None  # the transport cost is the cosine distance of learned features, whatever the problem's cost
    defaults = {
        "iterations": 2000,        # total updates (generator + critic), as t in seed 001 Algorithm 1
        "batch_size": 256,         # total real batch: X and X' hold batch_size / 2 each (seed 001: 512; 32 fails)
        "gen_per_critic": 4,       # generator updates per critic update (seed 001: 4; 1 gives noise)
        "epsilon": 0.01,           # entropic regularisation on the cosine cost (seed 001: 1/100; paper 1/500)
        "sinkhorn_iters": 100,     # log-domain Sinkhorn iterations per W (seed 001: up to 100; 10 is too few)
        "sinkhorn_grad": "autodiff",  # "autodiff" through the iterations or "envelope" (plan held fixed)
        "lr": 3e-4,
        "betas": (0.5, 0.999),
        "feature_dim": 64,         # critic feature dimension (L2-normalised; seed 001: the flattened conv output)
        "arch": "auto",            # "auto" (conv for images, mlp otherwise), "mlp" or "conv" (nets.py)
        "width": None,             # None: 128 (mlp) or 32 (conv channels); seed 001: 128 channels on CIFAR-10
        "depth": 2,                # MLP hidden layers (ignored by conv)
        "trace_every": 50,
    }

    def _check(self, problem: Problem) -> dict[str, Any]:
        p, name = self.params, self.name
        out = {key: _int_param(name, p, key) for key in ("iterations", "gen_per_critic", "sinkhorn_iters", "depth",
                                                         "feature_dim", "trace_every")}
        batch = _int_param(name, p, "batch_size", minimum=4)
        if batch % 2:
            raise InvalidInput(f"{name}: parameter 'batch_size' is the total real batch, split into two halves: "
                               f"it must be even, got {batch}")
        out["half"] = batch // 2
        out["epsilon"] = _float_param(name, p, "epsilon")
        out["lr"] = _float_param(name, p, "lr")
        out["betas"] = _betas(name, p)
        if p["sinkhorn_grad"] not in ("autodiff", "envelope"):
            raise InvalidInput(f"{name}: parameter 'sinkhorn_grad' must be 'autodiff' or 'envelope', "
                               f"got {p['sinkhorn_grad']!r}")
        out["arch"] = _arch(name, p, problem)
        out["width"] = (128 if out["arch"] == "mlp" else 32) if p["width"] is None else _int_param(name, p, "width")
        return out

    def _nets(self, problem: Problem, q: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
        arch, width, depth = q["arch"], q["width"], q["depth"]
        gen = _init(problem, self.name, "generator", lambda: make_generator_net(problem, arch, width, depth))
        critic = _init(problem, self.name, "critic", lambda: nn.Sequential(
            make_feature_net(problem, arch, width, depth, out_dim=q["feature_dim"]), _Normalize()))
        return gen, critic

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        q = self._check(problem)
        gen, critic = self._nets(problem, q)
        opt_g = torch.optim.Adam(gen.parameters(), lr=q["lr"], betas=q["betas"])
        opt_c = torch.optim.Adam(critic.parameters(), lr=q["lr"], betas=q["betas"])
        half, eps, iters, grad = q["half"], q["epsilon"], q["sinkhorn_iters"], self.params["sinkhorn_grad"]
        trace: list[dict[str, float]] = []
        start = time.perf_counter()
        total, period = q["iterations"], q["gen_per_critic"] + 1
        critic_steps = 0
        for t in range(1, total + 1):
            critic_turn = t % period == 0
            x = problem.sample_q(2 * half)
            z = problem.sample_p(2 * half)
            if critic_turn:
                with torch.no_grad():
                    y = gen(z).reshape(2 * half, -1)
            else:
                y = gen(z).reshape(2 * half, -1)
            f = critic(torch.cat([x, y]))
            fx, fx2, fy, fy2 = f[:half], f[half:2 * half], f[2 * half:3 * half], f[3 * half:]
            loss, parts = minibatch_energy_distance(fx, fx2, fy, fy2, eps, iters, grad)
            if not torch.isfinite(loss):
                raise SolverDidNotConverge(f"{self.name}: the loss became non-finite at update {t} (epsilon={eps:g}, "
                                           f"lr={q['lr']:g}); try a larger epsilon or a smaller lr")
            if critic_turn:
                opt_c.zero_grad(set_to_none=True)
                (-loss).backward()
                opt_c.step()
                critic_steps += 1
            else:
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_g.step()
            self._trace_point(trace, t, total, start, loss=float(loss.detach()), **parts)
        return Solution(generator=self._generator(gen, problem), iterations=total, trace=trace,
                        info={"final_loss": trace[-1]["loss"], "critic_steps": float(critic_steps),
                              "generator_steps": float(total - critic_steps)})


# ----------------------------------------------------------------------------------------------------------
# Sinkhorn and IPOT generators (minimum Kantorovich estimators through the plan)


class _PlanGenerator(_GenerativeSolver):
    """Shared loop: descend ``<P*, C(G(z), x)>`` with ``P*`` from a discrete solver on the detached cost."""

    costs = frozenset({"euclidean", "sqeuclidean"})
    common = {
        "iterations": 500,         # generator steps
        "batch_size": 200,         # generated and data points per step (seed 004: 200)
        "lr": 1e-4,                # seed 004: 1e-4
        "betas": (0.9, 0.999),     # Adam (seed 004 does not say; torch's defaults)
        "arch": "mlp",             # generator net of nets.py: "mlp" (seed 004), "conv" or "auto"
        "width": 500,              # seed 004: one hidden layer of 500
        "depth": 1,
        "ot_iters": 200,           # max iterations of the plan solver per step (seed 004: 200)
        "tol": None,               # the plan solver's tolerance (None: entropic.py's default)
        "normalize_cost": False,   # divide C by its max before computing the plan (the loss keeps the raw C)
        "trace_every": 50,
    }

    def _check_common(self) -> dict[str, Any]:
        p, name = self.params, self.name
        out = {key: _int_param(name, p, key) for key in ("iterations", "width", "depth", "ot_iters", "trace_every")}
        out["batch_size"] = _int_param(name, p, "batch_size", minimum=2)
        out["lr"] = _float_param(name, p, "lr")
        out["betas"] = _betas(name, p)
        out["tol"] = None if p["tol"] is None else _float_param(name, p, "tol")
        if not isinstance(p["normalize_cost"], bool):
            raise InvalidInput(f"{name}: parameter 'normalize_cost' must be true or false, got {p['normalize_cost']!r}")
        out["normalize_cost"] = p["normalize_cost"]
        return out

    def _check_method(self) -> None:
        """Validate the plan solver's own parameters (subclasses)."""

    def plan(self, cost: torch.Tensor) -> DiscreteResult:
        """The plan of ``cost`` (float64, uniform weights) from entropic.py's solver."""
        raise NotImplementedError

    def _plan_of(self, cost: torch.Tensor, normalize: bool) -> DiscreteResult:
        c = cost.detach().to(torch.float64)
        if normalize:
            c = c / c.max().clamp_min(torch.finfo(c.dtype).tiny)
        return self.plan(c)

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        q = self._check_common()
        self._check_method()
        arch = _arch(self.name, self.params, problem)
        dt = problem.dtype
        gen = _init(problem, self.name, "generator", lambda: make_generator_net(problem, arch, q["width"], q["depth"]))
        opt = torch.optim.Adam(gen.parameters(), lr=q["lr"], betas=q["betas"])
        batch, total = q["batch_size"], q["iterations"]
        trace: list[dict[str, float]] = []
        converged = solver_iters = 0
        start = time.perf_counter()
        for it in range(1, total + 1):
            y = gen(problem.sample_p(batch))
            x = problem.sample_q(batch)
            cost = train_cost(y, x, problem.cost)
            res = self._plan_of(cost, q["normalize_cost"])
            loss = (res.plan.to(dt) * cost).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            converged += int(res.converged)
            solver_iters += res.iterations
            self._trace_point(trace, it, total, start, loss=float(loss.detach()), plan_iterations=float(res.iterations),
                              plan_converged=float(res.converged), marginal_error=float(res.marginal_error),
                              **self._extra(res))
        return Solution(generator=self._generator(gen, problem), iterations=total, trace=trace,
                        info={"final_loss": trace[-1]["loss"], "plan_converged_fraction": converged / total,
                              "mean_plan_iterations": solver_iters / total})

    def _extra(self, res: DiscreteResult) -> dict[str, float]:
        return {}


class SinkhornGenerator(_PlanGenerator):
    """Minimum-Kantorovich generator: descend <P, C(G(z), x)> with P the entropic plan (Sinkhorn, epsilon)."""

    name = "sinkhorn_generator"
    defaults = {**_PlanGenerator.common, "epsilon": 1.0, "sinkhorn_method": "stabilized"}

    def _check_method(self) -> None:
        _float_param(self.name, self.params, "epsilon")
        if self.params["sinkhorn_method"] not in SINKHORN_METHODS:
            raise InvalidInput(f"{self.name}: parameter 'sinkhorn_method' must be one of {SINKHORN_METHODS}, "
                               f"got {self.params['sinkhorn_method']!r}")

    def plan(self, cost: torch.Tensor) -> DiscreteResult:
        n, m = cost.shape
        p = self.params
        a = cost.new_full((n,), 1.0 / n)
        b = cost.new_full((m,), 1.0 / m)
        return sinkhorn_solve(a, b, cost, float(p["epsilon"]), method=p["sinkhorn_method"],
                              max_iter=int(p["ot_iters"]), tol=p["tol"], trace=False)


class IPOTGenerator(_PlanGenerator):
    """Minimum-Kantorovich generator: descend <P, C(G(z), x)> with P the IPOT plan (beta; converges to the LP plan)."""

    name = "ipot_generator"
    defaults = {**_PlanGenerator.common, "beta": 1.0, "inner_iters": 1}

    def _check_method(self) -> None:
        _float_param(self.name, self.params, "beta")
        _int_param(self.name, self.params, "inner_iters")

    def plan(self, cost: torch.Tensor) -> DiscreteResult:
        n, m = cost.shape
        p = self.params
        a = cost.new_full((n,), 1.0 / n)
        b = cost.new_full((m,), 1.0 / m)
        tol = 1e-5 if p["tol"] is None else float(p["tol"])
        return ipot_solve(a, b, cost, beta=float(p["beta"]), inner_iters=int(p["inner_iters"]),
                          max_iter=int(p["ot_iters"]), tol=tol, trace=False)

    def _extra(self, res: DiscreteResult) -> dict[str, float]:
        return {"certified_gap": float(res.info.get("certified_gap", -1.0))}


# ----------------------------------------------------------------------------------------------------------
# SPOT generator


class SPOTGenerator(_GenerativeSolver):
    """SPOT (seed 004 eq. 3.7) with the latent as P: G pushes the latent onto the data under a 1-Lipschitz critic."""

    name = "spot_generator"
    costs = frozenset({"euclidean", "sqeuclidean"})
    defaults = {
        "iterations": 2000,        # generator steps
        "n_critic": 5,             # critic ascent steps per generator step (seed 004 Algorithm 3)
        "batch_size": 256,
        "eta": 10.0,               # weight of the marginal (critic) term; see plugins/maps/spot.py's notes
        "transport_weight": None,  # weight of E c(z, G(z)): None = 1 if latent_dim == dim, else 0
        "lr": 1e-4,
        "lr_critic": 1e-3,         # None: same as lr
        "lr_final": None,          # None: constant; else cosine decay of both rates to lr_final / lr
        "betas": (0.5, 0.999),
        "arch": "mlp",             # generator net of nets.py: "mlp", "conv" or "auto" (the critic is SPOT's MLP)
        "gen_width": 128,
        "gen_depth": 2,
        "critic_hidden": 128,
        "critic_layers": 2,
        "lipschitz": "spectral",   # "spectral" (seed 004) or "clip" (seed 000)
        "clip_value": 0.1,
        "trace_every": 100,
    }

    def _check(self, problem: Problem) -> dict[str, Any]:
        p, name = self.params, self.name
        out = {key: _int_param(name, p, key) for key in ("iterations", "n_critic", "batch_size", "gen_width",
                                                         "gen_depth", "critic_hidden", "critic_layers", "trace_every")}
        out["eta"] = _float_param(name, p, "eta")
        out["lr"] = _float_param(name, p, "lr")
        out["lr_critic"] = out["lr"] if p["lr_critic"] is None else _float_param(name, p, "lr_critic")
        out["lr_final"] = None if p["lr_final"] is None else _float_param(name, p, "lr_final")
        out["betas"] = _betas(name, p)
        if p["lipschitz"] not in ("spectral", "clip"):
            raise InvalidInput(f"{name}: parameter 'lipschitz' must be 'spectral' or 'clip', got {p['lipschitz']!r}")
        out["clip_value"] = _float_param(name, p, "clip_value")
        same_space = int(problem.latent_dim) == int(problem.dim)
        if p["transport_weight"] is None:
            out["transport_weight"] = 1.0 if same_space else 0.0
        else:
            out["transport_weight"] = _float_param(name, p, "transport_weight", inclusive=True)
            if out["transport_weight"] > 0 and not same_space:
                raise InvalidInput(f"{name}: transport_weight > 0 needs the latent and the data in one space "
                                   f"(latent_dim {problem.latent_dim} != dim {problem.dim}); use 0 or None")
        return out

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        q = self._check(problem)
        p = self.params
        arch = _arch(self.name, p, problem)
        gen = _init(problem, self.name, "generator",
                    lambda: make_generator_net(problem, arch, q["gen_width"], q["gen_depth"]))
        critic = _init(problem, self.name, "critic",
                       lambda: lipschitz_critic(problem.dim, q["critic_hidden"], q["critic_layers"], p["lipschitz"]))
        critic_params = list(critic.parameters())
        opt_c = torch.optim.Adam(critic_params, lr=q["lr_critic"], betas=q["betas"])
        opt_g = torch.optim.Adam(gen.parameters(), lr=q["lr"], betas=q["betas"])
        batch, eta, weight, total = q["batch_size"], q["eta"], q["transport_weight"], q["iterations"]
        same_space = int(problem.latent_dim) == int(problem.dim)
        ratio = 1.0 if q["lr_final"] is None else q["lr_final"] / q["lr"]
        trace: list[dict[str, float]] = []
        start = time.perf_counter()
        for it in range(1, total + 1):
            factor = cosine_lr_factor(it, total, ratio)
            for opt, base in ((opt_c, q["lr_critic"]), (opt_g, q["lr"])):
                for group in opt.param_groups:
                    group["lr"] = base * factor
            for _ in range(q["n_critic"]):
                with torch.no_grad():
                    y_gen = gen(problem.sample_p(batch))
                gap = critic_gap(critic, y_gen, problem.sample_q(batch))
                opt_c.zero_grad(set_to_none=True)
                (-eta * gap).backward()
                opt_c.step()
                if p["lipschitz"] == "clip":
                    clip_weights(critic_params, q["clip_value"])
            z = problem.sample_p(batch)
            y_gen = gen(z)
            # E c(z, G(z)) is logged whenever latent and data share a space (a diagnostic even at weight 0)
            transport = train_cost_paired(z, y_gen, problem.cost) if same_space else y_gen.new_zeros(())
            loss = weight * transport + eta * critic(y_gen).mean()
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            self._trace_point(trace, it, total, start, loss=float(loss.detach()), transport=float(transport.detach()),
                              critic_gap=float(gap.detach()))
        return Solution(generator=self._generator(gen, problem), iterations=total, trace=trace,
                        info={"final_transport": trace[-1]["transport"], "final_critic_gap": trace[-1]["critic_gap"],
                              "transport_weight": weight})


OT_GENERATORS = (OTGAN, SinkhornGenerator, IPOTGenerator, SPOTGenerator)


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    for cls in OT_GENERATORS:
        register(cls)
