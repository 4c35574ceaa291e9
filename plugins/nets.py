"""Small building blocks shared by the neural solvers: seeded MLPs and frozen callables over trained nets."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def seeded(seed: int) -> None:
    """Seed torch's global RNG (CPU and CUDA) so that layer initialisation is reproducible."""
    torch.manual_seed(int(seed))


def mlp(
    sizes: Sequence[int],
    activation: Callable[[], nn.Module] = nn.ReLU,
    linear: Callable[[int, int], nn.Module] = nn.Linear,
) -> nn.Sequential:
    """``sizes = [in, h1, ..., out]``: Linear layers with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def critic_width(dim: int) -> int:
    """Hidden width of the published W1-benchmark critics: max(2D, 128)."""
    return max(2 * int(dim), 128)


def frozen_callable(module: nn.Module, squeeze_last: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function over the trained module in the state training ended with.

    Gradients with respect to the *input* still flow (metrics differentiate critics); parameters stop
    requiring grad. The train/eval mode is left as the solver set it: a solver whose layers behave
    differently in eval mode (spectral norm, orthogonal parametrisations) must make sure eval uses the
    weights training ended with.
    """
    for p in module.parameters():
        p.requires_grad_(False)

    def call(x: torch.Tensor) -> torch.Tensor:
        out = module(x)
        return out.squeeze(-1) if squeeze_last else out

    return call
