"""SPOT: Scalable Push-forward of Optimal Transport (Xie et al. 2019; seed 004 Algorithm 3, seed 000 Algorithm 2).

A generator maps a shared latent z ~ N(0, I) to a pair (G_X(z), G_Y(z)); two 1-Lipschitz marginal critics
lambda_X, lambda_Y measure how far each generated marginal is from P and Q. The Lagrangian of seed 004 eq. 3.7,

    min_G max_{lambda_X, lambda_Y in Lip_1}  E c(G_X(z), G_Y(z))
        + eta (E lambda_X(G_X(z)) - E_P lambda_X(x) + E lambda_Y(G_Y(z)) - E_Q lambda_Y(y)),

is solved by alternating stochastic gradients: ``n_critic`` ascent steps on the critics, then one descent step
on the generators (Adam with betas (0.5, 0.999) as in the thesis). The critics are kept 1-Lipschitz by spectral
normalisation of every layer (the thesis) or by weight clipping (the seed-000 reproduction). The solution is the
coupling (G_X(z), G_Y(z)) as paired samples and the distance E c(G_X(z), G_Y(z)) over ``n_eval`` latent draws.

Defaults differ from the thesis where short CPU runs need it (measured on the W1 = 5 pair, 2000 generator
steps): a critic learning rate 10x the generator's (with one shared rate the generated
marginals oscillate and stay off by ~0.5 in mean after 2000 steps), batch 500, and eta = 10. With eta = 1e4
the cost term is 1e-4 of the critic term in the generator gradient, so within a few thousand steps nothing
aligns the pairing and E c stays 5-25 % above W1; for the Euclidean cost any eta > 1 keeps the penalised
optimum at the OT cost (triangle inequality) when the critics are tight, and spectrally normalised critics are
not tight, so eta must stay well above 1 (eta = 2 let a marginal drift and the cost fall below W1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from otbench import Problem, Solution, Solver, hookimpl
from otbench.api import InvalidInput
from otbench.costs import paired_cost
from otbench.sampling import derive_seed, make_generator
from otbench_plugins.nets import frozen_callable, mlp, seeded


def _spectral_linear(fan_in: int, fan_out: int) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(nn.Linear(fan_in, fan_out))


def _batches(sample: Callable[[int], torch.Tensor], n_samples: int | None, batch: int,
             gen: torch.Generator) -> Callable[[], torch.Tensor]:
    """Fresh draws each call (``n_samples`` None) or mini-batches from a fixed data set of ``n_samples`` points."""
    if n_samples is None:
        return lambda: sample(batch)
    data = sample(int(n_samples))
    return lambda: data[torch.randint(data.shape[0], (batch,), generator=gen, device=data.device)]


def lipschitz_critic(dim: int, hidden: int, layers: int, lipschitz: str) -> nn.Sequential:
    """A LeakyReLU MLP critic ``dim -> 1``, spectrally normalised (``"spectral"``) or plain for weight clipping."""
    linear = _spectral_linear if lipschitz == "spectral" else nn.Linear
    return mlp([int(dim)] + [int(hidden)] * int(layers) + [1], activation=nn.LeakyReLU, linear=linear)


def clip_weights(params: list[torch.Tensor], clip_value: float) -> None:
    """Weight clipping of the seed-000 reproduction: every critic parameter into [-clip_value, clip_value]."""
    with torch.no_grad():
        for w in params:
            w.clamp_(-float(clip_value), float(clip_value))


def critic_gap(critic: nn.Module, generated: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """E critic(generated) - E critic(data), in one forward pass (one spectral-norm power iteration)."""
    values = critic(torch.cat([generated, data])).squeeze(-1)
    return values[: generated.shape[0]].mean() - values[generated.shape[0]:].mean()


def cosine_lr_factor(it: int, total: int, final_ratio: float) -> float:
    """Cosine decay of the learning rate from 1 to ``final_ratio`` over the run."""
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * (it - 1) / max(total - 1, 1)))


class SPOT(Solver):
    """SPOT (Xie et al.): paired generators from a shared latent, 1-Lipschitz marginal critics, Lagrangian eq. 3.7."""

    name = "spot"
    kinds = frozenset({"continuous"})
    costs = frozenset({"euclidean", "sqeuclidean"})
    provides = frozenset({"distance", "plan_samples"})
    threads = 1
    defaults = {
        "iterations": 2000,       # generator steps
        "n_critic": 5,            # critic ascent steps per generator step
        "batch_size": 500,        # seed 004: 100
        "eta": 10.0,              # weight of the marginal terms (seed 004: 1e4 to 1e5; see the module notes)
        "lr": 1e-4,               # generator learning rate (Adam)
        "lr_critic": 1e-3,        # None: same as lr (seed 004: one rate for all nets)
        "lr_final": None,         # None: constant; else both rates decay (cosine) by the factor lr_final / lr
        "betas": (0.5, 0.999),
        "latent_dim": None,       # None: the problem's dimension (seed 004: 2 on its 2-D pairs)
        "gen_hidden": 32,
        "gen_layers": 2,
        "critic_hidden": 32,
        "critic_layers": 1,
        "lipschitz": "spectral",  # "spectral" (seed 004) or "clip" (seed 000)
        "clip_value": 0.1,
        "n_samples": None,        # None: fresh draws every step; an int: fixed data sets of that size
        "n_eval": 100000,         # latent draws for the returned distance
        "trace_every": 100,
    }

    def _check_params(self) -> None:
        p = self.params
        if p["lipschitz"] not in ("spectral", "clip"):
            raise InvalidInput(f"spot: lipschitz must be 'spectral' or 'clip', got {p['lipschitz']!r}")
        for key in ("iterations", "n_critic", "batch_size", "gen_hidden", "critic_hidden", "n_eval", "trace_every"):
            if int(p[key]) < 1:
                raise InvalidInput(f"spot: {key} must be >= 1, got {p[key]!r}")
        if p["eta"] <= 0 or p["lr"] <= 0 or (p["lr_critic"] is not None and p["lr_critic"] <= 0):
            raise InvalidInput(f"spot: eta and lr must be > 0, got eta={p['eta']!r}, lr={p['lr']!r}")

    def _critic(self, dim: int) -> nn.Module:
        p = self.params
        return lipschitz_critic(dim, int(p["critic_hidden"]), int(p["critic_layers"]), p["lipschitz"])

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        self._check_params()
        p = self.params
        dim, dev, dt, cost = problem.dim, problem.device, problem.dtype, problem.cost
        latent = int(p["latent_dim"] or dim)
        batch, eta, n_critic = int(p["batch_size"]), float(p["eta"]), int(p["n_critic"])

        seeded(problem.seed)
        gen_sizes = [latent] + [int(p["gen_hidden"])] * int(p["gen_layers"]) + [dim]
        g_x, g_y = (mlp(gen_sizes, activation=nn.LeakyReLU).to(dev, dt) for _ in range(2))
        lam_x, lam_y = (self._critic(dim).to(dev, dt) for _ in range(2))
        critic_params = list(lam_x.parameters()) + list(lam_y.parameters())
        gen_params = list(g_x.parameters()) + list(g_y.parameters())
        betas = tuple(float(b) for b in p["betas"])
        lr_c = float(p["lr_critic"] if p["lr_critic"] is not None else p["lr"])
        opt_c = torch.optim.Adam(critic_params, lr=lr_c, betas=betas)
        opt_g = torch.optim.Adam(gen_params, lr=float(p["lr"]), betas=betas)

        rng = make_generator(derive_seed(problem.seed, "spot", "latent"), dev)
        draw_x = _batches(problem.sample_p, p["n_samples"], batch, rng)
        draw_y = _batches(problem.sample_q, p["n_samples"], batch, rng)

        def latent_batch(n: int) -> torch.Tensor:
            return torch.randn(n, latent, generator=rng, device=dev, dtype=dt)

        trace: list[dict[str, float]] = []
        start = time.perf_counter()
        total = int(p["iterations"])
        ratio = 1.0 if p["lr_final"] is None else float(p["lr_final"]) / float(p["lr"])
        for it in range(1, total + 1):
            factor = cosine_lr_factor(it, total, ratio)
            for opt, base in ((opt_c, lr_c), (opt_g, float(p["lr"]))):
                for group in opt.param_groups:
                    group["lr"] = base * factor
            # critics: ascend eta * (E lambda(G(z)) - E lambda(data)) for a fixed generator
            for _ in range(n_critic):
                x, y, z = draw_x(), draw_y(), latent_batch(batch)
                with torch.no_grad():
                    gx, gy = g_x(z), g_y(z)
                gap_x = critic_gap(lam_x, gx, x)
                gap_y = critic_gap(lam_y, gy, y)
                opt_c.zero_grad(set_to_none=True)
                (-eta * (gap_x + gap_y)).backward()
                opt_c.step()
                if p["lipschitz"] == "clip":
                    clip_weights(critic_params, float(p["clip_value"]))
            # generators: one descent step on E c(G_X, G_Y) + eta (E lambda_X(G_X) + E lambda_Y(G_Y))
            z = latent_batch(batch)
            gx, gy = g_x(z), g_y(z)
            transport = paired_cost(gx, gy, cost).mean()
            loss = transport + eta * (lam_x(gx).mean() + lam_y(gy).mean())
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            if it % int(p["trace_every"]) == 0 or it == int(p["iterations"]):
                trace.append({"iteration": it, "time": time.perf_counter() - start, "cost": float(transport.detach()),
                              "critic_gap_x": float(gap_x.detach()), "critic_gap_y": float(gap_y.detach())})

        # eval mode freezes the spectral-norm power iteration at the state training ended with
        for net in (g_x, g_y, lam_x, lam_y):
            net.eval()
        gen_x, gen_y = frozen_callable(g_x), frozen_callable(g_y)
        with torch.no_grad():
            total, n_eval = 0.0, int(p["n_eval"])
            for s in range(0, n_eval, 16384):
                z = latent_batch(min(16384, n_eval - s))
                total += float(paired_cost(gen_x(z), gen_y(z), cost).sum())
        distance = total / n_eval

        plan_rng = make_generator(derive_seed(problem.seed, "spot", "plan_samples"), dev)

        def plan_samples(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            z = torch.randn(int(n), latent, generator=plan_rng, device=dev, dtype=dt)
            with torch.no_grad():
                return gen_x(z), gen_y(z)

        return Solution(distance=distance, plan_samples=plan_samples, iterations=int(p["iterations"]), trace=trace,
                        info={"final_batch_cost": trace[-1]["cost"], "final_critic_gap_x": trace[-1]["critic_gap_x"],
                              "final_critic_gap_y": trace[-1]["critic_gap_y"]})


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    register(SPOT)
