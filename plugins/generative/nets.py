"""Generator and critic architectures shared by the generative solvers (WGAN family, DCGAN, OT-GAN, Sinkhorn/IPOT,
SPOT generators), and the seeded sample stream a trained generator is handed out as.

Points are flat ``[n, dim]`` everywhere (see ``otbench.api``); the convolutional nets reshape internally with the
problem's ``shape`` and return flat outputs, so every solver can swap ``arch: mlp`` for ``arch: conv`` without
other changes.

- ``make_generator_net(problem, arch, width, depth)``: latent ``[n, latent_dim] -> [n, dim]``. Its output layer
  respects ``problem.value_range``: ``low + (high - low) * sigmoid(.)`` for images, the identity otherwise.
- ``make_feature_net(problem, arch, width, depth, out_dim)``: ``[n, dim] -> [n, out_dim]`` discriminator / critic
  body (LeakyReLU 0.2, DCGAN style); ``out_dim=1`` for a scalar critic, larger for OT-GAN's feature critic.
- ``mlp_generator`` / ``mlp_features`` / ``ConvGenerator`` / ``ConvFeatures``: the building blocks.
- ``generator_stream(net, sample_latent)``: the frozen callable ``n -> [n, dim]`` a Solution's ``generator`` holds.
  It draws latents from ``sample_latent`` (the problem's own latent sampler, a seeded stream), so the same solver
  seed gives the same draws and successive calls give fresh samples.
- ``seeded_init(seed, build)``: build a module under a forked, seeded global RNG (reproducible initialisation that
  leaves the caller's RNG alone).

Widths: the CPU suites use ``width`` 128-256 MLPs; conv nets have ``width`` channels in their first (critic) or
last (generator) hidden block, doubling towards the latent side.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from otbench.api import InvalidInput, Problem

__all__ = [
    "ARCHS",
    "OutputRange",
    "mlp_generator",
    "mlp_features",
    "ConvGenerator",
    "ConvFeatures",
    "make_generator_net",
    "make_feature_net",
    "generator_stream",
    "seeded_init",
]

ARCHS = ("mlp", "conv")


class OutputRange(nn.Module):
    """Maps unbounded pre-activations into ``(low, high)`` by a scaled sigmoid; identity when ``bounds`` is None."""

    def __init__(self, bounds: tuple[float, float] | None) -> None:
        super().__init__()
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bounds is None:
            return x
        low, high = self.bounds
        return low + (high - low) * torch.sigmoid(x)


def mlp_generator(latent_dim: int, dim: int, width: int = 256, depth: int = 2,
                  bounds: tuple[float, float] | None = None, batch_norm: bool = False) -> nn.Sequential:
    """``[latent_dim, width x depth, dim]`` ReLU MLP (optionally batch-normed hidden layers), output in ``bounds``."""
    layers: list[nn.Module] = []
    fan_in = int(latent_dim)
    for _ in range(int(depth)):
        layers.append(nn.Linear(fan_in, int(width)))
        if batch_norm:
            layers.append(nn.BatchNorm1d(int(width)))
        layers.append(nn.ReLU())
        fan_in = int(width)
    layers += [nn.Linear(fan_in, int(dim)), OutputRange(bounds)]
    return nn.Sequential(*layers)


def mlp_features(dim: int, out_dim: int = 1, width: int = 256, depth: int = 2,
                 negative_slope: float = 0.2) -> nn.Sequential:
    """``[dim, width x depth, out_dim]`` LeakyReLU MLP (a discriminator / feature critic body, no output squashing)."""
    layers: list[nn.Module] = []
    fan_in = int(dim)
    for _ in range(int(depth)):
        layers += [nn.Linear(fan_in, int(width)), nn.LeakyReLU(negative_slope)]
        fan_in = int(width)
    layers.append(nn.Linear(fan_in, int(out_dim)))
    return nn.Sequential(*layers)


def _check_image_shape(shape: tuple[int, ...], who: str) -> tuple[int, int, int]:
    if len(shape) != 3 or shape[1] % 4 or shape[2] % 4:
        raise InvalidInput(f"{who}: arch 'conv' needs images [C, H, W] with H and W multiples of 4 (e.g. 8x8, "
                           f"28x28), got shape {tuple(shape)}; use arch 'mlp'")
    return int(shape[0]), int(shape[1]), int(shape[2])


class ConvGenerator(nn.Module):
    """DCGAN-style generator: latent -> Linear -> [2w, H/4, W/4] -> two stride-2 transposed convs -> [C, H, W].

    Batch norm after the hidden layers, ReLU, and the ``OutputRange`` squashing last; returns flat ``[n, C*H*W]``.
    """

    def __init__(self, latent_dim: int, shape: tuple[int, ...], width: int = 32,
                 bounds: tuple[float, float] | None = (0.0, 1.0)) -> None:
        super().__init__()
        c, h, w = _check_image_shape(shape, "ConvGenerator")
        self.start = (2 * int(width), h // 4, w // 4)
        self.project = nn.Sequential(nn.Linear(int(latent_dim), 2 * int(width) * (h // 4) * (w // 4)),
                                     nn.BatchNorm1d(2 * int(width) * (h // 4) * (w // 4)), nn.ReLU())
        self.body = nn.Sequential(
            nn.ConvTranspose2d(2 * int(width), int(width), 4, 2, 1), nn.BatchNorm2d(int(width)), nn.ReLU(),
            nn.ConvTranspose2d(int(width), c, 4, 2, 1), OutputRange(bounds),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.body(self.project(z).reshape(z.shape[0], *self.start))
        return out.flatten(1)


class ConvFeatures(nn.Module):
    """DCGAN-style critic body on flat images: two stride-2 convs (LeakyReLU 0.2) -> Linear -> ``[n, out_dim]``."""

    def __init__(self, shape: tuple[int, ...], out_dim: int = 1, width: int = 32, negative_slope: float = 0.2) -> None:
        super().__init__()
        c, h, w = _check_image_shape(shape, "ConvFeatures")
        self.shape = (c, h, w)
        self.body = nn.Sequential(
            nn.Conv2d(c, int(width), 4, 2, 1), nn.LeakyReLU(negative_slope),
            nn.Conv2d(int(width), 2 * int(width), 4, 2, 1), nn.LeakyReLU(negative_slope),
        )
        self.head = nn.Linear(2 * int(width) * (h // 4) * (w // 4), int(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x.reshape(x.shape[0], *self.shape))
        return self.head(out.flatten(1))


def _check_arch(arch: str, who: str) -> None:
    if arch not in ARCHS:
        raise InvalidInput(f"{who}: parameter 'arch' must be one of {ARCHS}, got {arch!r}")


def make_generator_net(problem: Problem, arch: str = "mlp", width: int = 256, depth: int = 2,
                       batch_norm: bool = False) -> nn.Module:
    """A generator ``[n, latent_dim] -> [n, dim]`` for ``problem``, its outputs inside ``problem.value_range``.

    ``arch='mlp'``: ``mlp_generator`` (``depth`` hidden layers of ``width``); ``arch='conv'``: ``ConvGenerator``
    (images only; ``width`` channels in the last hidden block, ``depth`` ignored).
    """
    _check_arch(arch, "make_generator_net")
    if arch == "conv":
        return ConvGenerator(int(problem.latent_dim), problem.sample_shape, width=width,
                             bounds=problem.value_range)
    return mlp_generator(int(problem.latent_dim), problem.dim, width=width, depth=depth,
                         bounds=problem.value_range, batch_norm=batch_norm)


def make_feature_net(problem: Problem, arch: str = "mlp", width: int = 256, depth: int = 2,
                     out_dim: int = 1) -> nn.Module:
    """A critic / discriminator body ``[n, dim] -> [n, out_dim]`` for ``problem`` (LeakyReLU 0.2)."""
    _check_arch(arch, "make_feature_net")
    if arch == "conv":
        return ConvFeatures(problem.sample_shape, out_dim=out_dim, width=width)
    return mlp_features(problem.dim, out_dim=out_dim, width=width, depth=depth)


def generator_stream(net: nn.Module, sample_latent: Callable[[int], torch.Tensor],
                     chunk: int = 4096) -> Callable[[int], torch.Tensor]:
    """The frozen generator ``n -> [n, dim]`` a Solution hands out (eval mode, no grad, chunked).

    Latents come from ``sample_latent`` (pass the problem's ``sample_p``: a seeded stream), so draws are
    reproducible for a solver seed and fresh on every call. Parameters stop requiring grad.
    """
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)

    def generate(n: int) -> torch.Tensor:
        n = int(n)
        with torch.no_grad():
            parts = [net(sample_latent(min(chunk, n - start))) for start in range(0, max(n, 1), chunk)]
        return torch.cat(parts) if len(parts) != 1 else parts[0]

    return generate


def seeded_init(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` under torch's global RNG seeded with ``seed``, restored afterwards (reproducible init)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()
