"""Adversarial generators: WGAN trained against each W1 critic family, and a DCGAN-style non-OT baseline.

WGAN generators (Arjovsky et al. 2017; the critic is the Kantorovich-Rubinstein dual of W1 between the data and
the generated measure). One solver per critic family of ``plugins/w1/critics.py``, reusing that module's critic
network (``build``), its Lipschitz device (``lipschitz_hooks``: gradient / Lipschitz penalty at interpolates,
weight clipping after each step, spectral-norm or Bjorck-orthonormal layers) and its per-batch objective
(``critic_objective``); nothing is copied:

- ``wgan_wc_gen`` (weight clipping), ``wgan_gp_gen`` (gradient penalty), ``wgan_lp_gen`` (Lipschitz penalty),
  ``wgan_sn_gen`` (spectral normalisation), ``groupsort_so_gen`` (GroupSort + Bjorck orthonormal weights).

Each generator step follows ``critic_steps`` critic steps; the critic maximises ``E_data f - E_G f`` (minus its
penalty), the generator minimises ``-E f(G(z))``. The critic takes points flat (images are vectors here).

``dcgan`` is the *non-OT* baseline a user would compare with: a DCGAN-style GAN (Radford et al. 2016) with the
non-saturating loss (Goodfellow et al. 2014): the discriminator minimises ``softplus(-D(x)) + softplus(D(G(z)))``,
the generator ``softplus(-D(G(z)))``, one discriminator step per generator step, Adam 2e-4 (0.5, 0.999).
``arch: conv`` gives DCGAN's convolutional nets on images; ``mlp`` (default, the CPU-budget choice) gives MLPs.

Generators come from ``plugins/generative/nets.py``: images leave through a sigmoid scaled to the problem's
``value_range``. The Solution's ``generator`` draws latents from the problem's latent stream, so it is seeded
by the problem seed and fresh on every call. Defaults are the WGAN-GP paper's toy settings (Gulrajani et al.
2017: Adam 1e-4, betas (0.5, 0.9), 5 critic steps, batch 256; iterations shortened); suites set their budgets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from otbench import Problem, Solution, Solver, hookimpl
from otbench.api import InvalidInput, SolverDidNotConverge
from otbench.sampling import derive_seed, make_generator
from otbench_plugins.generative.nets import ARCHS, generator_stream, make_feature_net, make_generator_net, seeded_init
from otbench_plugins.w1.critics import (
    GradientPenalty,
    GroupSortSO,
    LipschitzPenalty,
    SpectralNorm,
    WeightClipping,
    adam_betas,
    critic_objective,
)

__all__ = ["adversarial_training", "WGANGenerator", "WGANWeightClipping", "WGANGradientPenalty",
           "WGANLipschitzPenalty", "WGANSpectralNorm", "WGANGroupSort", "DCGAN", "GAN_SOLVERS"]

#: per-batch critic update: (real, fake) -> (loss to minimise, numbers to trace)
CriticLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
#: generator update: fake -> loss to minimise
GeneratorLoss = Callable[[torch.Tensor], torch.Tensor]


def adversarial_training(
    problem: Problem,
    generator: nn.Module,
    critic: nn.Module,
    *,
    critic_loss: CriticLoss,
    generator_loss: GeneratorLoss,
    iterations: int,
    critic_steps: int,
    batch_size: int,
    generator_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer,
    after_critic_step: Callable[[nn.Module], None] | None = None,
    trace_every: int = 100,
    name: str = "gan",
) -> list[dict[str, float]]:
    """Alternate ``critic_steps`` critic updates and one generator update, ``iterations`` times; return the trace.

    Real batches come from ``problem.sample_q``, latents from ``problem.sample_p``. The critic sees generated
    points detached; during the generator update the critic is in eval mode (spectral-norm layers then reuse
    their power-iteration vectors instead of advancing them) and its parameters do not collect gradients. Trace
    rows (every ``trace_every`` generator steps and the last): ``iteration``, ``time``, ``critic_loss``,
    ``generator_loss`` and the critic loss's own numbers. A non-finite loss raises ``SolverDidNotConverge``.
    """
    b = int(batch_size)
    critic_params = list(critic.parameters())
    trace: list[dict[str, float]] = []
    start = time.perf_counter()
    for it in range(1, int(iterations) + 1):
        generator.train()
        critic.train()
        for _ in range(int(critic_steps)):
            real = problem.sample_q(b)
            with torch.no_grad():
                fake = generator(problem.sample_p(b))
            c_loss, logs = critic_loss(real, fake)
            critic_opt.zero_grad(set_to_none=True)
            c_loss.backward()
            critic_opt.step()
            if after_critic_step is not None:
                after_critic_step(critic)
        critic.eval()
        for q in critic_params:
            q.requires_grad_(False)
        g_loss = generator_loss(generator(problem.sample_p(b)))
        generator_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        generator_opt.step()
        for q in critic_params:
            q.requires_grad_(True)
        if it % int(trace_every) == 0 or it == int(iterations):
            row = {"iteration": float(it), "critic_loss": float(c_loss.detach()),
                   "generator_loss": float(g_loss.detach())}
            row.update({k: float(v.detach()) for k, v in logs.items()})
            row["time"] = time.perf_counter() - start
            trace.append(row)
            if not (math.isfinite(row["critic_loss"]) and math.isfinite(row["generator_loss"])):
                raise SolverDidNotConverge(f"{name}: training diverged at generator step {it} (critic loss "
                                           f"{row['critic_loss']}, generator loss {row['generator_loss']})")
    return trace


# ---------------------------------------------------------------------------------------------------------------
# parameter validation shared by every adversarial generator

_COMMON: dict[str, Any] = {
    "iterations": 2000,        # generator steps
    "critic_steps": 5,         # critic steps per generator step
    "batch_size": 256,
    "lr": 1e-4,                # generator learning rate
    "critic_lr": None,         # None: same as lr
    "betas": (0.5, 0.9),
    "arch": "mlp",             # generator: "mlp" or "conv" (images)
    "width": 256,              # generator width (conv: channels of its last hidden block)
    "depth": 2,                # generator hidden layers (mlp)
    "critic_width": 256,
    "critic_depth": 2,
    "trace_every": 100,
}


def _check_common(name: str, p: dict[str, Any]) -> None:
    def bad(field: str, why: str) -> InvalidInput:
        return InvalidInput(f"{name}: parameter {field!r} {why}, got {p[field]!r}")

    for field in ("iterations", "critic_steps", "batch_size", "width", "depth", "critic_width", "critic_depth",
                  "trace_every"):
        v = p[field]
        low = 0 if field == "iterations" else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise bad(field, f"must be an integer >= {low}")
    for field in ("lr", "critic_lr"):
        if field == "critic_lr" and p[field] is None:
            continue
        try:
            v = float(p[field])
        except (TypeError, ValueError):
            raise bad(field, "must be a number") from None
        if not (v > 0 and math.isfinite(v)):
            raise bad(field, "must be a positive finite number")
        p[field] = v
    p["betas"] = adam_betas(p["betas"], lambda why: bad("betas", why))
    if p["arch"] not in ARCHS:
        raise bad("arch", f"must be one of {ARCHS}")


def _adam(params: Any, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=float(lr), betas=betas)


class _AdversarialGenerator(Solver):
    """Shared solve(): build generator and critic, run ``adversarial_training``, hand out a seeded stream."""

    kinds = frozenset({"generative"})
    provides = frozenset({"generator"})
    threads = 1

    def check_params(self) -> None:
        _check_common(self.name, self.params)

    def build_critic(self, problem: Problem) -> tuple[nn.Module, CriticLoss, GeneratorLoss,
                                                       Callable[[nn.Module], None] | None]:
        """``(critic net, critic loss, generator loss, after-critic-step hook)`` for ``problem``."""
        raise NotImplementedError

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        self.check_params()
        p = self.params
        if p["arch"] == "conv" and not problem.is_image:
            raise InvalidInput(f"{self.name}: arch 'conv' needs an image problem, got points of shape "
                               f"{problem.sample_shape}")
        gen_net = seeded_init(derive_seed(problem.seed, "generator-init", self.name),
                              lambda: make_generator_net(problem, p["arch"], p["width"], p["depth"]))
        gen_net = gen_net.to(device=problem.device, dtype=problem.dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(problem.seed, "critic-init", self.name))
            critic, critic_loss, generator_loss, after = self.build_critic(problem)
        critic = critic.to(device=problem.device, dtype=problem.dtype)
        critic_lr = p["lr"] if p["critic_lr"] is None else p["critic_lr"]
        trace = adversarial_training(
            problem, gen_net, critic, critic_loss=critic_loss, generator_loss=generator_loss,
            iterations=p["iterations"], critic_steps=p["critic_steps"], batch_size=p["batch_size"],
            generator_opt=_adam(gen_net.parameters(), p["lr"], p["betas"]),
            critic_opt=_adam(critic.parameters(), critic_lr, p["betas"]),
            after_critic_step=after, trace_every=p["trace_every"], name=self.name,
        )
        info: dict[str, float] = {}
        if trace:
            info.update({f"final_{k}": v for k, v in trace[-1].items() if k not in ("iteration", "time")})
            info["train_seconds"] = trace[-1]["time"]
        return Solution(generator=generator_stream(gen_net, problem.sample_p), iterations=int(p["iterations"]),
                        trace=trace, info=info)


# ---------------------------------------------------------------------------------------------------------------
# WGAN generators: one per critic family of plugins/w1/critics.py


class WGANGenerator(_AdversarialGenerator):
    """WGAN generator trained against a W1 critic family (set ``family``); see the module docstring."""

    #: the critic solver class of plugins/w1/critics.py whose network and Lipschitz device are used
    family: ClassVar[type] = GradientPenalty
    #: parameters passed through to the family (its own names and meanings)
    family_params: ClassVar[tuple[str, ...]] = ()

    def critic_family(self) -> Any:
        """The configured critic-family solver instance (validated); its ``build`` / hooks make the critic."""
        p = self.params
        fam = self.family(width=p["critic_width"], depth=p["critic_depth"], batch_size=p["batch_size"],
                          lr=p["critic_lr"] if p["critic_lr"] is not None else p["lr"], betas=p["betas"],
                          **{k: p[k] for k in self.family_params})
        try:
            fam.check_params()
        except InvalidInput as exc:
            raise InvalidInput(f"{self.name}: {exc}") from None
        return fam

    def check_params(self) -> None:
        super().check_params()
        self.critic_family()

    def build_critic(self, problem: Problem) -> tuple[nn.Module, CriticLoss, GeneratorLoss,
                                                       Callable[[nn.Module], None] | None]:
        fam = self.critic_family()
        net = fam.build(problem.dim)
        penalty, weight, after = fam.lipschitz_hooks()
        b = int(self.params["batch_size"])
        gen = make_generator(derive_seed(problem.seed, "critic-interpolates", self.name), problem.device)
        t = torch.empty(b, 1, device=problem.device, dtype=problem.dtype)

        def critic_loss(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            # x = data, y = generated: the critic maximises E_data f - E_G f, a W1 estimate on the batch
            loss, gap, pen = critic_objective(net, real, fake, penalty, weight, gen, t)
            return loss, ({"gap": gap} if pen is None else {"gap": gap, "penalty": pen})

        def generator_loss(fake: torch.Tensor) -> torch.Tensor:
            return -net(fake).mean()

        return net, critic_loss, generator_loss, after


class WGANWeightClipping(WGANGenerator):
    """WGAN generator, weight-clipping critic (critics.py ``wgan_wc``; WGAN paper clip 0.01)."""

    name = "wgan_wc_gen"
    family = WeightClipping
    family_params = ("clip", "clip_biases")
    defaults = {**_COMMON, "clip": 0.01, "clip_biases": False}


class WGANGradientPenalty(WGANGenerator):
    """WGAN-GP generator: gradient-penalty critic (critics.py ``wgan_gp``, lambda 10)."""

    name = "wgan_gp_gen"
    family = GradientPenalty
    family_params = ("penalty_weight",)
    defaults = {**_COMMON, "penalty_weight": 10.0}


class WGANLipschitzPenalty(WGANGenerator):
    """WGAN-LP generator: one-sided Lipschitz-penalty critic (critics.py ``wgan_lp``, lambda 10)."""

    name = "wgan_lp_gen"
    family = LipschitzPenalty
    family_params = ("penalty_weight",)
    defaults = {**_COMMON, "penalty_weight": 10.0}


class WGANSpectralNorm(WGANGenerator):
    """WGAN generator, spectrally normalised critic (critics.py ``wgan_sn``)."""

    name = "wgan_sn_gen"
    family = SpectralNorm
    family_params = ("power_iterations",)
    defaults = {**_COMMON, "power_iterations": 1}


class WGANGroupSort(WGANGenerator):
    """WGAN generator, GroupSort critic with Bjorck-orthonormal weights (critics.py ``groupsort_so``)."""

    name = "groupsort_so_gen"
    family = GroupSortSO
    family_params = ("group_size", "bjorck_iterations")
    defaults = {**_COMMON, "group_size": 2, "bjorck_iterations": 8}


# ---------------------------------------------------------------------------------------------------------------
# the non-OT baseline


class DCGAN(_AdversarialGenerator):
    """Non-OT baseline: DCGAN-style GAN with the non-saturating loss (MLP nets by default; arch conv for images)."""

    name = "dcgan"
    defaults = {**_COMMON, "critic_steps": 1, "lr": 2e-4, "betas": (0.5, 0.999)}

    def build_critic(self, problem: Problem) -> tuple[nn.Module, CriticLoss, GeneratorLoss, None]:
        p = self.params
        arch = p["arch"] if problem.is_image else "mlp"
        net = make_feature_net(problem, arch, p["critic_width"], p["critic_depth"], out_dim=1)

        def critic_loss(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            out = net(torch.cat([real, fake])).squeeze(-1)
            b = real.shape[0]
            d_real, d_fake = out[:b], out[b:]
            loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
            return loss, {"d_real": torch.sigmoid(d_real).mean(), "d_fake": torch.sigmoid(d_fake).mean()}

        def generator_loss(fake: torch.Tensor) -> torch.Tensor:
            return F.softplus(-net(fake).squeeze(-1)).mean()  # non-saturating: -log D(G(z))

        return net, critic_loss, generator_loss, None


GAN_SOLVERS: tuple[type[_AdversarialGenerator], ...] = (
    WGANWeightClipping, WGANGradientPenalty, WGANLipschitzPenalty, WGANSpectralNorm, WGANGroupSort, DCGAN,
)


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    for cls in GAN_SOLVERS:
        register(cls)
