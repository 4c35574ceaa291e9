"""LeNet-like networks and a seeded supervised training loop, shared by the adaptation and transfer solvers.

``lenet_trunk`` is the trunk of seed 000's DASPOT discriminator/classifier scaled to a knob: conv 5x5 ->
max-pool 2 -> conv 5x5 -> max-pool 2 -> linear to ``features`` (seed 000: widths 20, 50 and 500 features;
our CPU budgets use narrower ones). ``Classifier`` is a trunk plus a linear class head that takes *flat*
points (as problems hold them) and views them as images. ``train_supervised`` runs Adam on cross-entropy with
mini-batches drawn from a seeded generator, and ``as_classifier`` freezes a trained model into the callable a
``Solution`` carries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["lenet_trunk", "trunk_out_size", "Classifier", "train_supervised", "as_classifier", "batch_indices"]


def trunk_out_size(size: int) -> int:
    """Spatial side after two (conv 5x5, max-pool 2) stages: 28 -> 4, 32 -> 5."""
    side = (size - 4) // 2
    side = (side - 4) // 2
    if side < 1:
        raise ValueError(f"images of side {size} are too small for the LeNet trunk (need >= 16)")
    return side


def lenet_trunk(in_channels: int, size: int = 28, widths: Sequence[int] = (20, 50), features: int = 500,
                spectral: bool = False, activation: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    """Images ``[n, C, size, size]`` -> features ``[n, features]`` (ends with the activation).

    ``spectral``: spectrally normalise every layer (a 1-Lipschitz-ish critic trunk, as in SN-GAN).
    """
    wrap = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)
    c1, c2 = (int(w) for w in widths)
    side = trunk_out_size(size)
    return nn.Sequential(
        wrap(nn.Conv2d(in_channels, c1, 5)), nn.MaxPool2d(2), activation(),
        wrap(nn.Conv2d(c1, c2, 5)), nn.MaxPool2d(2), activation(),
        nn.Flatten(), wrap(nn.Linear(c2 * side * side, int(features))), activation(),
    )


class Classifier(nn.Module):
    """Trunk + linear class head over flat inputs ``[n, C*H*W]`` viewed as ``shape``; ``embed`` gives the features."""

    def __init__(self, shape: Sequence[int], n_classes: int, widths: Sequence[int] = (20, 50), features: int = 500):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3 or self.shape[1] != self.shape[2]:
            raise ValueError(f"Classifier needs square images [C, H, H], got shape {self.shape}")
        self.trunk = lenet_trunk(self.shape[0], self.shape[1], widths, features)
        self.head = nn.Linear(int(features), int(n_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x.reshape(x.shape[0], *self.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def batch_indices(n: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """``batch`` indices drawn uniformly with replacement from ``range(n)`` (on the generator's device)."""
    return torch.randint(int(n), (int(batch),), generator=gen, device=gen.device)


def train_supervised(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, steps: int, batch: int, lr: float,
                     gen: torch.Generator, trace: list[dict[str, float]] | None = None, trace_every: int = 100,
                     weight_decay: float = 0.0, params: Sequence[torch.Tensor] | None = None,
                     penalty: Callable[[], torch.Tensor] | None = None, step_offset: int = 0) -> float:
    """Adam on the mean cross-entropy of ``model(x[idx])`` for ``steps`` mini-batches; returns the last loss.

    ``params``: what to optimise (default: all of the model's); ``penalty``: an extra loss term added at every
    step (e.g. a weight penalty); ``trace``: appended every ``trace_every`` steps with the loss and batch accuracy.
    """
    opt = torch.optim.Adam(list(params) if params is not None else model.parameters(), lr=lr,
                           weight_decay=weight_decay)
    model.train()
    start = time.perf_counter()
    loss_value = float("nan")
    for it in range(1, int(steps) + 1):
        idx = batch_indices(x.shape[0], batch, gen).to(x.device)
        logits = model(x[idx])
        loss = F.cross_entropy(logits, labels[idx])
        if penalty is not None:
            loss = loss + penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
        if trace is not None and (it % int(trace_every) == 0 or it == int(steps)):
            acc = float((logits.argmax(-1) == labels[idx]).float().mean())
            trace.append({"iteration": step_offset + it, "time": time.perf_counter() - start, "loss": loss_value,
                          "batch_accuracy": acc})
    return loss_value


def as_classifier(model: nn.Module, batch: int = 1024) -> Callable[[torch.Tensor], torch.Tensor]:
    """The trained model frozen in eval mode: flat ``[n, dim]`` -> logits ``[n, n_classes]`` (no gradients)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def classify(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(x[s:s + batch]) for s in range(0, x.shape[0], batch)]) if x.shape[0] else \
                model(x)

    return classify
