"""NOT: Neural Optimal Transport (Korotin, Selikhanovych, Burnaev; seed 002 eqs. 5-10), quadratic costs.

The OT cost is written as a max-min over a potential f and a transport map T,

    Cost(P, Q) = sup_f inf_T  E_P[ C(x, T(x, .)) - E_z f(T(x, z)) ] + E_Q f(y),

and solved with the published schedule: one ascent step on f followed by ``k_T`` (10) descent steps on T,
Adam for both. Two costs:

- ``not_strong``: C(x, T(x)) = 1/2 |x - T(x)|^2 with a deterministic map T(x) (the Kantorovich / Brenier case).
- ``not_weak``: the gamma-weak quadratic cost C(x, mu) = 1/2 E_mu|x - y|^2 - gamma/2 Var(mu), with a stochastic
  map T(x, z), z ~ N(0, z_std^2 I); each x gets ``z_size`` latent draws and Var is their unbiased variance.
  For gamma > 0 the weak-optimal plan is *not* the strong one, so its L2-UVP against the strong T* does not go
  to 0; gamma = 0 is the strong problem solved with a stochastic parametrisation.

Parametrisation (our choice, stated): T = id + MLP (``residual``), f = MLP, ReLU, ``layers`` hidden layers of
``hidden`` units (default max(100, 2 D)). The returned map is T (stochastic for ``not_weak``: fresh z per call);
the potential f is attached to it as ``solution.map.potential`` (f: [n, d] -> [n]; it is *not* a W1 critic, so
it is not returned as ``critic``). ``distance`` is the transport cost E|x - T(x)|^2 of the learned map on
``n_eval`` draws of P (the problem's squared Euclidean cost, no 1/2); ``info['dual_value']`` is 2 x the
max-min objective on the same draws (for ``not_weak`` it estimates twice the gamma-weak cost).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from otbench import Problem, Solution, Solver, hookimpl
from otbench.api import InvalidInput
from otbench.sampling import derive_seed, make_generator
from otbench_plugins.nets import frozen_callable, mlp, seeded

Transport = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class TrainedMap:
    """A trained transport map T: [n, d] -> [n, d], carrying the trained potential as ``.potential``."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], potential: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._fn = fn
        self.potential = potential

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)


class _ResidualMap(nn.Module):
    """T(x) = x + net(x) (strong), or T(x, z) = x + net([x, z]) (weak)."""

    def __init__(self, net: nn.Module, residual: bool) -> None:
        super().__init__()
        self.net, self.residual = net, residual

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        out = self.net(x if z is None else torch.cat([x, z], dim=1))
        return x + out if self.residual else out


def train_max_min(problem: Problem, transport: Transport, t_params: list[nn.Parameter], potential: nn.Module,
                  params: dict) -> list[dict[str, float]]:
    """The NOT schedule: per iteration one step on f (max), then ``k_T`` steps on T (min).

    ``transport(x)`` returns ``(T samples [m, d], mean weak cost C(x, T(x, .)) over the batch)``.
    """
    batch, k_t = int(params["batch_size"]), int(params["k_T"])
    betas = tuple(float(b) for b in params["betas"])
    opt_t = torch.optim.Adam(t_params, lr=float(params["lr_T"]), betas=betas)
    f_params = list(potential.parameters())
    opt_f = torch.optim.Adam(f_params, lr=float(params["lr_f"]), betas=betas)
    iterations, every = int(params["iterations"]), int(params["trace_every"])
    trace: list[dict[str, float]] = []
    start = time.perf_counter()
    for it in range(1, iterations + 1):
        x, y = problem.sample_p(batch), problem.sample_q(batch)
        with torch.no_grad():
            ty, _ = transport(x)
        loss_f = potential(ty).mean() - potential(y).mean()  # minimise = maximise E_Q f - E f(T)
        opt_f.zero_grad(set_to_none=True)
        loss_f.backward()
        opt_f.step()
        for w in f_params:
            w.requires_grad_(False)
        for _ in range(k_t):
            ty, cost = transport(problem.sample_p(batch))
            loss_t = cost - potential(ty).mean()
            opt_t.zero_grad(set_to_none=True)
            loss_t.backward()
            opt_t.step()
        for w in f_params:
            w.requires_grad_(True)
        if it % every == 0 or it == iterations:
            trace.append({"iteration": it, "time": time.perf_counter() - start, "loss_f": float(loss_f.detach()),
                          "loss_T": float(loss_t.detach()), "cost": float(cost.detach())})
    return trace


def strong_transport(t_map: nn.Module) -> tuple[Transport, Callable[[torch.Tensor], torch.Tensor]]:
    """``(transport, apply_map)`` for the strong quadratic cost 1/2 |x - T(x)|^2 of a deterministic map."""

    def transport(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ty = t_map(x)
        return ty, 0.5 * (x - ty).square().sum(-1).mean()

    def apply_map(x: torch.Tensor) -> torch.Tensor:
        return t_map(x)

    return transport, apply_map


def weak_transport(t_map: nn.Module, dim: int, z_dim: int, z_size: int, z_std: float, gamma: float, seed: int,
                   device: torch.device, label: str = "not_weak") -> tuple[Transport, Callable[[torch.Tensor], torch.Tensor]]:
    """``(transport, apply_map)`` for the gamma-weak quadratic cost of a stochastic map ``t_map(x, z)``.

    Each x gets ``z_size`` latent draws z ~ N(0, z_std^2 I_{z_dim}); the cost is 1/2 E|x - T(x, z)|^2 minus
    gamma/2 times the unbiased variance over the draws. Training and the returned map draw z from two streams
    derived from ``seed`` and ``label``.
    """
    train_rng = make_generator(derive_seed(seed, label, "train_z"), device)
    map_rng = make_generator(derive_seed(seed, label, "map_z"), device)

    def noise(n: int, rng: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        return z_std * torch.randn(n, z_dim, generator=rng, device=like.device, dtype=like.dtype)

    def transport(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_rep = x.repeat_interleave(z_size, dim=0)
        ty = t_map(x_rep, noise(x_rep.shape[0], train_rng, x))
        grouped = ty.reshape(x.shape[0], z_size, dim)
        transport_term = 0.5 * (x.unsqueeze(1) - grouped).square().sum(-1).mean()
        variance = grouped.var(dim=1, unbiased=True).sum(-1).mean()
        return ty, transport_term - 0.5 * gamma * variance

    def apply_map(x: torch.Tensor) -> torch.Tensor:
        return t_map(x, noise(x.shape[0], map_rng, x))

    return transport, apply_map


def evaluate_max_min(problem: Problem, transport: Transport, f: Callable[[torch.Tensor], torch.Tensor],
                     n_eval: int) -> tuple[float, float]:
    """``(E|x - T(x)|^2, 2 x max-min objective)`` of a trained pair on ``n_eval`` fresh draws of the problem."""
    with torch.no_grad():
        x, y = problem.sample_p(n_eval), problem.sample_q(n_eval)
        ty, weak_cost = transport(x)
        x_rep = x.repeat_interleave(ty.shape[0] // x.shape[0], dim=0)
        distance = float((x_rep - ty).square().sum(-1).mean())
        dual = 2.0 * float(weak_cost - f(ty).mean() + f(y).mean())
    return distance, dual


class _NOT(Solver):
    """Shared setup of the NOT solvers; subclasses define the transport (map and cost)."""

    kinds = frozenset({"continuous"})
    costs = frozenset({"sqeuclidean"})
    provides = frozenset({"map", "distance"})
    threads = 1
    defaults = {
        "iterations": 2000,   # potential (f) steps; each is followed by k_T map steps
        "k_T": 10,            # map steps per potential step (published schedule)
        "batch_size": 64,
        "lr_T": 1e-4,         # published learning rates (Adam)
        "lr_f": 1e-4,
        "betas": (0.9, 0.999),
        "hidden": None,       # None: max(100, 2 D)
        "layers": 3,
        "residual": True,
        "n_eval": 16384,      # draws of P for the returned distance and dual value
        "trace_every": 100,
    }

    def _width(self, dim: int) -> int:
        return int(self.params["hidden"] or max(100, 2 * dim))

    def _check_params(self) -> None:
        p = self.params
        for key in ("iterations", "k_T", "batch_size", "layers", "n_eval", "trace_every"):
            if int(p[key]) < 1:
                raise InvalidInput(f"{self.name}: {key} must be >= 1, got {p[key]!r}")
        if p["lr_T"] <= 0 or p["lr_f"] <= 0:
            raise InvalidInput(f"{self.name}: learning rates must be > 0")

    def _build_map(self, problem: Problem) -> tuple[_ResidualMap, Transport, Callable[[torch.Tensor], torch.Tensor]]:
        """``(module, transport for training, sampler x -> T(x) used after training)``."""
        raise NotImplementedError

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        self._check_params()
        dim, width, layers = problem.dim, self._width(problem.dim), int(self.params["layers"])
        seeded(problem.seed)
        potential = mlp([dim] + [width] * layers + [1]).to(problem.device, problem.dtype)
        t_module, transport, apply_map = self._build_map(problem)
        trace = train_max_min(problem, transport, list(t_module.parameters()), potential, self.params)

        t_module.eval()
        potential.eval()
        f = frozen_callable(potential, squeeze_last=True)
        for w in t_module.parameters():
            w.requires_grad_(False)
        distance, dual = evaluate_max_min(problem, transport, f, int(self.params["n_eval"]))
        info = {"dual_value": dual, "final_loss_f": trace[-1]["loss_f"], "final_loss_T": trace[-1]["loss_T"]}
        return Solution(distance=distance, map=TrainedMap(apply_map, f), iterations=int(self.params["iterations"]),
                        trace=trace, info=info)


class NOTStrong(_NOT):
    """NOT with the strong quadratic cost 1/2|x - y|^2: a deterministic map T(x) and a potential f."""

    name = "not_strong"

    def _build_map(self, problem: Problem) -> tuple[_ResidualMap, Transport, Callable[[torch.Tensor], torch.Tensor]]:
        dim, width, layers = problem.dim, self._width(problem.dim), int(self.params["layers"])
        t_map = _ResidualMap(mlp([dim] + [width] * layers + [dim]), bool(self.params["residual"]))
        t_map = t_map.to(problem.device, problem.dtype)
        return (t_map, *strong_transport(t_map))


class NOTWeak(_NOT):
    """NOT with the gamma-weak quadratic cost: a stochastic map T(x, z) (Korotin et al., weak OT)."""

    name = "not_weak"
    defaults = {**_NOT.defaults, "gamma": 0.1, "z_dim": None, "z_std": 1.0, "z_size": 4}

    def _check_params(self) -> None:
        super()._check_params()
        p = self.params
        if not 0 <= float(p["gamma"]) <= 1 or int(p["z_size"]) < 2 or float(p["z_std"]) < 0:
            raise InvalidInput(f"not_weak needs 0 <= gamma <= 1, z_size >= 2, z_std >= 0; got {p}")

    def _build_map(self, problem: Problem) -> tuple[_ResidualMap, Transport, Callable[[torch.Tensor], torch.Tensor]]:
        p = self.params
        dim, width, layers = problem.dim, self._width(problem.dim), int(p["layers"])
        z_dim, z_size, z_std, gamma = int(p["z_dim"] or dim), int(p["z_size"]), float(p["z_std"]), float(p["gamma"])
        t_map = _ResidualMap(mlp([dim + z_dim] + [width] * layers + [dim]), bool(p["residual"]))
        t_map = t_map.to(problem.device, problem.dtype)
        return (t_map, *weak_transport(t_map, dim, z_dim, z_size, z_std, gamma, problem.seed, problem.device))


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    register(NOTStrong)
    register(NOTWeak)
