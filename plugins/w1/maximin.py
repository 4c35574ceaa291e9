"""Maximin and regularised dual W1 solvers (seed 003, section 3.3; Korotin, Kolesov, Burnaev 2022).

All four solve the Kantorovich dual of W1 with the Euclidean cost c(x, y) = |x - y| without forcing the
critic to be 1-Lipschitz. Instead they handle the c-transform ``phi^c(z) = min_w |w - z| - phi(w)``:

- ``mm`` (MM, "three-player WGAN"): a critic ``phi`` on P's side and a *mover* network ``H`` that learns the
  c-transform's argmin for points of Q: ``H(y) ~ argmin_x |x - y| - phi(x)``. Each iteration takes
  ``mover_steps`` steps on ``E_Q[|H(y) - y| - phi(H(y))]`` (minimised over H), then one step maximising
  ``E_P phi + E_Q[|H(y) - y| - phi(H(y))]`` over phi. The mover goes **from Q towards P** (it is an
  approximate inverse transport map), so it is *not* returned as ``map``; the critic is ``f = phi``.
- ``mm_r`` (MM:R, reversed): the same game with P and Q swapped: a potential ``g`` on Q's side and a mover
  ``T`` on P, ``T(x) ~ argmin_y |y - x| - g(y)``. At a good saddle point ``T`` is an OT map P -> Q, returned
  as ``map``. The returned critic is ``f = -g`` (so that it maximises ``E_P f - E_Q f``).
- ``mm_b`` (MM:B, batch c-transform, (q,p)-WGAN style): the c-transform is minimised over the current batch
  of P instead of all of R^D: ``phi^c(y_j) ~ min_i |x_i - y_j| - phi(x_i)``; the critic maximises
  ``E_P phi + E_Q phi^c``. Critic ``f = phi``; no map.
- ``reg_ls`` (Reg / LS, Seguy et al. 2018): two potentials ``f`` (on P) and ``g`` (on Q) maximise
  ``E_P f + E_Q g - E_{P x Q} R(f(x) + g(y) - |x - y|)`` with ``R(u) = relu(u)^2 / (4 eps)`` (``l2``) or
  ``eps * exp(u / eps)`` (``entropic``). The critic is ``f``; the plan has density ``R'(f + g - c)`` with
  respect to P x Q, which ``plan_samples`` resamples from pools of independent samples. The penalty is taken
  on index-paired samples (``pairs="paired"``, as published) or on every pair of the batch (``"all"``).
  Both regularisers bias W1 by an amount that grows with eps (measured on a 2-D shift with |m| = 2, L2:
  critic estimate -0.05 at eps 0.001, -0.18 at 0.01, -0.55 at 0.1). The entropic penalty is stiff: at
  eps 0.01 it failed on that task (estimates 0.4-0.8 instead of 2), at eps 0.1 it behaved like L2 at 0.01.

The returned ``distance`` is, by default (``estimate="critic"``), the published benchmark's estimate
``mean f(x ~ P) - mean f(y ~ Q)`` on ``eval_samples`` fresh samples of the solver's own streams;
``estimate="dual"`` returns the method's dual objective instead (mover / batch c-transform, or
``E_P f + E_Q g`` for Reg). Both values are always stored in ``info`` (``critic_estimate``, ``dual_estimate``).

Published (GPU) defaults, from the official benchmark notebook ``notebooks/test_nd.ipynb`` of the Kantorovich
Strikes Back repository (hyperparameter cell): MLPs ``[D, max(2D,128), max(2D,128), 1]`` with ReLU, movers
``[D, max(2D,128), max(2D,128), D]``; batch 1024; learning rate 2e-4; 12 mover steps per critic step;
15000 iterations for MM, MM:R and MM:B ("WGAN-qp" there), 10000 for LS with the L2 regulariser and eps 0.01.
Adam betas (a parameter) are the published ones: (0, 0.9) for MM and MM:R, Adam's defaults (0.9, 0.999) for MM:B
("wgan-qp") and Reg / LS (LSOT) (see the audit below).
CPU budgets pass fewer iterations (and may pass a smaller batch) as suite parameters.

Audit against the authors' code (src/methods.py, notebooks/test_nd.ipynb; read, not copied):

- Iterations: the notebook version at commit 0af1e05 (whose printed D=16, N=16 table equals the released
  per-cell CSV) trains 3P-WGAN (MM), its reverse (MM:R), WGAN-qp and CoWGAN 15000 iterations, as the defaults
  here; the version at 6ae670b trains MM and MM:R 20000, WGAN-qp and CoWGAN 25000. LSOT: 10000, eps 0.01 in
  both.
- MM:B is the published "wgan-qp" (``train_WGAN_qp``: argmin of ``|x_i - y_j| - phi(x_i)`` over the P batch
  without gradient, loss through ``phi`` at the argmin), the same objective as here. "cowgan" (switches
  between the direct loss and batch c-transforms in both directions) has no counterpart here.
- MM / MM:R: the published mover loss is ``E[|H(y) - y| - phi(H(y))]`` (plus a constant), the critic step one
  ascent on ``E phi(own) - E phi(H(other)) + E|H(other) - other|``, as here; MM:R swaps the samplers. The
  published MM:R row is scored on the mover's direction: ``MMR`` parameter ``score``.
- Reg / LS ("lsot-f"): ``1/(4 eps) relu(f(x_i) + g(y_i) - |x_i - y_i|)^2`` on index-paired samples, two
  optimisers (one per potential), the critic is ``f``: as here with ``pairs="paired"``.
- Adam betas, verified in the notebook's optimiser cells (both versions, identical lines): 3P-WGAN (MM) and
  its reverse (MM:R), critic and mover, ``Adam(lr=LR, betas=(0., 0.9))``, as here; WGAN-qp (MM:B) and LSOT
  (both potentials) ``Adam(lr=LR)``, i.e. (0.9, 0.999): the defaults here are the same (version 2 of MM:B and
  Reg; version 1 used (0, 0.9) for both). On the main job's CPU budget the change moves no cell beyond its
  intervals: results/reference/w1_continuous_cpu/betas_check.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from otbench import Problem, Solution, Solver, hookimpl
from otbench.api import InvalidInput, SolverDidNotConverge
from otbench.env import synchronize

from otbench_plugins.nets import critic_width, frozen_callable, mlp, seeded

Tensor = torch.Tensor
Step = Callable[[Tensor, Tensor], dict[str, Tensor]]

#: Hyperparameters shared by every solver of this module (published GPU values).
_COMMON: dict[str, Any] = {
    "iterations": 15000,      # critic steps
    "batch_size": 1024,       # samples per side per step
    "lr": 2e-4,               # Adam learning rate (critic / potentials)
    "betas": (0.0, 0.9),      # Adam betas (MM:B and Reg: (0.9, 0.999), as published)
    "width": None,            # hidden width; None = max(2D, 128)
    "depth": 2,               # hidden layers
    "eval_samples": 16384,    # fresh samples per side for the final estimate
    "estimate": "critic",     # "critic": mean f(P) - mean f(Q); "dual": the method's dual objective
    "trace_every": 100,       # iterations between trace checkpoints
}

_MOVER: dict[str, Any] = {
    "mover_steps": 12,        # mover steps per critic step
    "mover_lr": None,         # None = lr
    "mover_residual": False,  # True: mover(z) = z + MLP(z) (starts near the identity); published: plain MLP
}


def _adam(modules: list[nn.Module], lr: float, betas: Any) -> torch.optim.Adam:
    b1, b2 = (float(b) for b in betas)
    params = [q for m in modules for q in m.parameters()]
    return torch.optim.Adam(params, lr=float(lr), betas=(b1, b2))


class _Residual(nn.Module):
    """``z -> z + net(z)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, z: Tensor) -> Tensor:
        return z + self.net(z)


def _train(problem: Problem, step: Step, iterations: int, batch: int, trace_every: int,
           name: str) -> list[dict[str, float]]:
    """The shared loop: draw a batch from each side, run ``step``, record a trace at checkpoints.

    ``step(x, y)`` performs the method's updates and returns detached scalar tensors; they are only read
    (``float``) at checkpoints so that the loop does not synchronise the device every iteration.
    """
    trace: list[dict[str, float]] = []
    start = time.perf_counter()
    for it in range(1, iterations + 1):
        x, y = problem.sample_p(batch), problem.sample_q(batch)
        stats = step(x, y)
        if it % trace_every == 0 or it == iterations:
            synchronize(problem.device)
            row: dict[str, float] = {"iteration": it, "time": time.perf_counter() - start}
            row.update({k: float(v) for k, v in stats.items()})
            trace.append(row)
            if not all(math.isfinite(v) for v in row.values()):
                raise SolverDidNotConverge(f"{name}: non-finite training values at iteration {it}: {row}")
    return trace


class _NeuralW1Solver(Solver):
    """Common plumbing: parameter checks, seeded nets, the shared loop, the final estimate and Solution."""

    kinds = frozenset({"continuous"})
    costs = frozenset({"euclidean"})
    threads = 1
    defaults: dict[str, Any] = dict(_COMMON)

    # -- hooks for subclasses ------------------------------------------------------------------------------
    def _setup(self, problem: Problem) -> dict[str, Any]:
        """Build nets/optimisers; return a dict with ``step``, ``critic`` (module, P-side convention sign
        in ``sign``), ``dual`` (callable (x, y) -> scalar tensor) and optionally ``map_module`` (a trained
        module P -> Q, frozen after training), ``frozen`` (other modules to freeze) and ``plan_samples``."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        p = self.params
        for key in ("iterations", "batch_size", "eval_samples", "trace_every", "depth"):
            if int(p[key]) < (0 if key == "iterations" else 1):
                raise InvalidInput(f"{self.name}: {key} must be a positive integer, got {p[key]!r}")
        if float(p["lr"]) <= 0:
            raise InvalidInput(f"{self.name}: lr must be > 0, got {p['lr']!r}")
        if p["estimate"] not in ("critic", "dual"):
            raise InvalidInput(f"{self.name}: estimate must be 'critic' or 'dual', got {p['estimate']!r}")
        if p["width"] is not None and int(p["width"]) < 1:
            raise InvalidInput(f"{self.name}: width must be None or >= 1, got {p['width']!r}")

    def _net(self, problem: Problem, out_dim: int) -> nn.Sequential:
        d = problem.dim
        width = critic_width(d) if self.params["width"] is None else int(self.params["width"])
        net = mlp([d] + [width] * int(self.params["depth"]) + [out_dim])
        return net.to(device=problem.device, dtype=problem.dtype)

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        self._check_params()
        seeded(problem.seed)
        parts = self._setup(problem)
        p = self.params
        trace = _train(problem, parts["step"], int(p["iterations"]), int(p["batch_size"]),
                       int(p["trace_every"]), self.name)

        sign = float(parts["sign"])
        module = parts["critic"]
        with torch.no_grad():
            n = int(p["eval_samples"])
            x, y = problem.sample_p(n), problem.sample_q(n)
            critic_est = float(sign * (module(x).mean() - module(y).mean()))
            dual_est = float(parts["dual"](x, y))
        if not (math.isfinite(critic_est) and math.isfinite(dual_est)):
            raise SolverDidNotConverge(f"{self.name}: non-finite final estimate ({critic_est}, {dual_est})")
        raw = frozen_callable(module, squeeze_last=True)
        critic = raw if sign > 0 else (lambda z: -raw(z))
        for extra in parts.get("frozen", ()):
            frozen_callable(extra)
        map_module = parts.get("map_module")
        info = {"critic_estimate": critic_est, "dual_estimate": dual_est}
        if trace:
            info.update({f"final_{k}": v for k, v in trace[-1].items() if k not in ("iteration", "time")})
            info["train_seconds"] = trace[-1]["time"]
        return Solution(
            distance=critic_est if p["estimate"] == "critic" else dual_est,
            critic=None if p.get("score") == "mover" else critic,
            map=frozen_callable(map_module) if map_module is not None else None,
            plan_samples=parts.get("plan_samples"),
            iterations=int(p["iterations"]),
            trace=trace,
            info=info,
        )


class _Maximin(_NeuralW1Solver):
    """A potential ``phi`` on one side and a mover learning the c-transform's argmin on the other side."""

    reverse: bool = False
    defaults = {**_COMMON, **_MOVER}

    def _check_params(self) -> None:
        super()._check_params()
        if int(self.params["mover_steps"]) < 1:
            raise InvalidInput(f"{self.name}: mover_steps must be >= 1, got {self.params['mover_steps']!r}")

    def _setup(self, problem: Problem) -> dict[str, Any]:
        p = self.params
        phi = self._net(problem, 1)
        mover: nn.Module = self._net(problem, problem.dim)
        if p["mover_residual"]:
            mover = _Residual(mover)
        opt_phi = _adam([phi], p["lr"], p["betas"])
        opt_mover = _adam([mover], p["mover_lr"] if p["mover_lr"] is not None else p["lr"], p["betas"])
        steps = int(p["mover_steps"])
        phi_params = list(phi.parameters())

        def ctransform(z: Tensor) -> tuple[Tensor, Tensor]:
            """``|H(z) - z| - phi(H(z))`` (>= the true c-transform) per point, and ``phi(H(z))``."""
            moved = mover(z)
            phi_moved = phi(moved).squeeze(-1)
            return (moved - z).norm(dim=-1) - phi_moved, phi_moved

        def step(x: Tensor, y: Tensor) -> dict[str, Tensor]:
            # MM: phi on P, mover on Q. MM:R: phi on Q, mover on P.
            own, other = (y, x) if self.reverse else (x, y)
            for param in phi_params:
                param.requires_grad_(False)
            for _ in range(steps):
                opt_mover.zero_grad(set_to_none=True)
                ct, _ = ctransform(other)
                ct.mean().backward()
                opt_mover.step()
            for param in phi_params:
                param.requires_grad_(True)
            opt_phi.zero_grad(set_to_none=True)
            with torch.no_grad():
                moved = mover(other)
                cost = (moved - other).norm(dim=-1)
            phi_own = phi(own).squeeze(-1)
            phi_moved = phi(moved).squeeze(-1)
            dual = phi_own.mean() + (cost - phi_moved).mean()
            (-dual).backward()
            opt_phi.step()
            with torch.no_grad():
                gap = phi_own.mean() - phi(other).squeeze(-1).mean()
            return {"dual": dual.detach(), "critic_gap": gap,  # E_P f - E_Q f in both directions
                    "mover_cost": cost.mean()}

        def dual(x: Tensor, y: Tensor) -> Tensor:
            own, other = (y, x) if self.reverse else (x, y)
            ct, _ = ctransform(other)
            return phi(own).mean() + ct.mean()

        parts: dict[str, Any] = {"step": step, "critic": phi, "sign": -1.0 if self.reverse else 1.0,
                                 "dual": dual, "frozen": [mover]}
        if self.reverse:
            parts["map_module"] = mover
        return parts


class MM(_Maximin):
    """MM: critic on P plus a mover network approximating the c-transform's argmin on Q (mover Q -> P)."""

    name = "mm"
    provides = frozenset({"distance", "critic"})
    reverse = False


class MMR(_Maximin):
    """MM:R: potential on Q plus a mover on P; the mover is a transport map P -> Q; critic = -potential.

    ``score`` says what the gradient metrics see. ``"critic"`` (default): the Solution holds the critic
    ``f = -g`` and the map, so ``grad_cos`` / ``grad_l2`` are the critic's gradient and the mover is scored
    separately (``transport_grad_*``). ``"mover"``: the like-for-like variant of the published "3p-wgan_rev"
    row, which the authors score on the mover's direction ``(x - T(x)) / |x - T(x)|`` (src/methods.py of the
    Kantorovich Strikes Back repository, ``cosine_metrics(..., flag_rev=True)``): the Solution omits the
    critic, so ``grad_*`` come from the map; the distance is still the critic estimate (the published
    ``cost`` of that row is ``-(mean g(P) - mean g(Q))`` too). The two can differ a lot: on D=128, N=4 a CPU
    run scored critic cos .569 and mover cos .002.
    """

    name = "mm_r"
    provides = frozenset({"distance", "critic", "map"})
    defaults = {**_Maximin.defaults, "score": "critic"}
    reverse = True

    def _check_params(self) -> None:
        super()._check_params()
        if self.params["score"] not in ("critic", "mover"):
            raise InvalidInput(f"mm_r: score must be 'critic' (grad metrics from the critic) or 'mover' (from the "
                               f"mover's direction, as published), got {self.params['score']!r}")


class MMB(_NeuralW1Solver):
    """MM:B: critic on P; c-transform of each y in the Q batch minimised over the current P batch."""

    name = "mm_b"
    version = "2"  # 2: Adam betas (0.9, 0.999) by default, as the published WGAN-qp
    provides = frozenset({"distance", "critic"})
    defaults = {**_COMMON, "betas": (0.9, 0.999)}

    def _setup(self, problem: Problem) -> dict[str, Any]:
        p = self.params
        phi = self._net(problem, 1)
        opt = _adam([phi], p["lr"], p["betas"])

        def batch_dual(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            phi_x = phi(x).squeeze(-1)
            cost = torch.cdist(y, x, compute_mode="donot_use_mm_for_euclid_dist")  # [m, n]
            ct = (cost - phi_x.unsqueeze(0)).min(dim=1).values                     # phi^c(y_j) over the batch
            return phi_x.mean() + ct.mean(), phi_x, ct

        def step(x: Tensor, y: Tensor) -> dict[str, Tensor]:
            opt.zero_grad(set_to_none=True)
            dual, phi_x, _ = batch_dual(x, y)
            (-dual).backward()
            opt.step()
            with torch.no_grad():
                gap = phi_x.mean() - phi(y).squeeze(-1).mean()
            return {"dual": dual.detach(), "critic_gap": gap}

        def dual(x: Tensor, y: Tensor) -> Tensor:
            # batch c-transform over a batch of the training size (the quantity the method optimises)
            k = min(int(p["batch_size"]), x.shape[0])
            return batch_dual(x[:k], y[:k])[0]

        return {"step": step, "critic": phi, "sign": 1.0, "dual": dual}


class RegLS(_NeuralW1Solver):
    """Reg / LS: two potentials with an L2 (or entropic) penalty on violations of f(x) + g(y) <= |x - y|."""

    name = "reg_ls"
    version = "2"  # 2: Adam betas (0.9, 0.999) by default, as the published LSOT
    provides = frozenset({"distance", "critic", "plan_samples"})
    defaults = {**_COMMON, "betas": (0.9, 0.999), "iterations": 10000, "regularization": "l2", "epsilon": 0.01,
                "pairs": "paired", "plan_pool": 2048}

    def _check_params(self) -> None:
        super()._check_params()
        p = self.params
        if p["regularization"] not in ("l2", "entropic"):
            raise InvalidInput(f"reg_ls: regularization must be 'l2' or 'entropic', got {p['regularization']!r}")
        if float(p["epsilon"]) <= 0:
            raise InvalidInput(f"reg_ls: epsilon must be > 0, got {p['epsilon']!r}")
        if p["pairs"] not in ("all", "paired"):
            raise InvalidInput(f"reg_ls: pairs must be 'paired' or 'all' (every x_i with every y_j), "
                               f"got {p['pairs']!r}")
        if not 1 <= int(p["plan_pool"]) <= 4096:  # torch.multinomial takes at most 2**24 categories
            raise InvalidInput(f"reg_ls: plan_pool must be in [1, 4096], got {p['plan_pool']!r}")

    @staticmethod
    def _exp_linear(z: Tensor, cap: float = 30.0) -> Tensor:
        """``exp(z)`` continued linearly (C1) beyond ``z = cap``: no float32 overflow, and violations past the
        cap are still penalised with a large constant slope instead of a clamped (zero) gradient."""
        zc = torch.clamp(z, max=cap)
        return torch.exp(zc) * (1 + (z - zc))

    def _penalty(self, u: Tensor) -> Tensor:
        eps = float(self.params["epsilon"])
        if self.params["regularization"] == "l2":
            return torch.relu(u).square() / (4 * eps)
        return eps * self._exp_linear(u / eps)

    def _plan_weights(self, u: Tensor) -> Tensor:
        """Probabilities over a pool of independent pairs, proportional to the plan density ``R'(u + a)``.

        ``u = f(x_i) + g(y_j) - |x_i - y_j|``. The constant ``a`` is the optimal offset of the potentials
        (``f + a`` is still a candidate), fixed by ``mean R'(u + a) = 1``, the first-order condition of the
        regularised dual in that direction: a plan has mass one. For trained potentials ``a`` is near 0; it
        keeps early or under-trained potentials (``u < 0`` everywhere) from giving an empty plan.
        """
        u = u.flatten()
        eps = float(self.params["epsilon"])
        if self.params["regularization"] == "entropic":
            return torch.softmax(u / eps, dim=0)  # exp((u + a)/eps) with mean 1; log-domain, no overflow
        # l2: R'(v) = relu(v) / (2 eps). With u sorted descending, the k largest are active when
        # a_k = (2 eps N - sum_{i<=k} u_i) / k satisfies u_k + a_k > 0 >= u_{k+1} + a_k.
        srt = torch.sort(u, descending=True).values
        k = torch.arange(1, srt.numel() + 1, device=u.device, dtype=u.dtype)
        a = (2 * eps * srt.numel() - torch.cumsum(srt, 0)) / k
        nxt = torch.cat([srt[1:], srt.new_full((1,), -math.inf)])
        ok = (srt + a > 0) & (nxt + a <= 0)
        offset = a[int(torch.nonzero(ok)[0])]
        w = torch.relu(u + offset)
        return w / w.sum()

    def _setup(self, problem: Problem) -> dict[str, Any]:
        p = self.params
        f, g = self._net(problem, 1), self._net(problem, 1)
        opt = _adam([f, g], p["lr"], p["betas"])
        all_pairs = p["pairs"] == "all"

        def violation(x: Tensor, y: Tensor, fx: Tensor, gy: Tensor, every_pair: bool) -> Tensor:
            """``f(x) + g(y) - |x - y|`` for every (x_i, y_j) ([n, m]) or for index-paired samples ([n])."""
            if every_pair:
                cost = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
                return fx.unsqueeze(1) + gy.unsqueeze(0) - cost
            return fx + gy - (x - y).norm(dim=-1)

        def step(x: Tensor, y: Tensor) -> dict[str, Tensor]:
            opt.zero_grad(set_to_none=True)
            fx, gy = f(x).squeeze(-1), g(y).squeeze(-1)
            potentials = fx.mean() + gy.mean()
            reg = self._penalty(violation(x, y, fx, gy, all_pairs)).mean()
            (reg - potentials).backward()
            opt.step()
            with torch.no_grad():
                gap = fx.mean() - f(y).squeeze(-1).mean()
            return {"dual": (potentials - reg).detach(), "potentials": potentials.detach(), "critic_gap": gap}

        def dual(x: Tensor, y: Tensor) -> Tensor:
            return f(x).mean() + g(y).mean()

        pool = int(p["plan_pool"])
        gen = torch.Generator(device=problem.device)
        gen.manual_seed(int(problem.seed))

        def plan_samples(n: int) -> tuple[Tensor, Tensor]:
            """Resample n pairs from fresh pools x_1..x_k ~ P, y_1..y_k ~ Q (k = plan_pool), every (x_i, y_j)
            weighted by the plan density R'(f(x_i) + g(y_j) - |x_i - y_j| + a) (see ``_plan_weights``)."""
            k = max(pool, 1)
            with torch.no_grad():
                x, y = problem.sample_p(k), problem.sample_q(k)
                w = self._plan_weights(violation(x, y, f(x).squeeze(-1), g(y).squeeze(-1), True))
                if not torch.isfinite(w).all():
                    raise SolverDidNotConverge("reg_ls: non-finite plan density")
                idx = torch.multinomial(w, int(n), replacement=True, generator=gen)
            return x[idx // k], y[idx % k]

        return {"step": step, "critic": f, "sign": 1.0, "dual": dual, "frozen": [g],
                "plan_samples": plan_samples}


MAXIMIN_SOLVERS: tuple[type[_NeuralW1Solver], ...] = (MM, MMR, MMB, RegLS)


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    for cls in MAXIMIN_SOLVERS:
        register(cls)
