"""Ground costs by name. ``euclidean``: |x - y|; ``sqeuclidean``: |x - y|^2."""

from __future__ import annotations

import torch

from otbench.api import InvalidInput

COSTS = ("euclidean", "sqeuclidean")


def pairwise_cost(x: torch.Tensor, y: torch.Tensor, cost: str) -> torch.Tensor:
    """Cost matrix ``[n, m]`` between ``x [n, d]`` and ``y [m, d]``, computed without cancellation error."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise InvalidInput(f"pairwise_cost needs [n, d] and [m, d] tensors, got {tuple(x.shape)} and {tuple(y.shape)}")
    if cost == "sqeuclidean":
        # cdist's matmul path (|x|^2 + |y|^2 - 2<x, y>) loses precision for close points and can go negative;
        # the direct difference form is non-negative and accurate.
        return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").square()
    if cost == "euclidean":
        return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    raise InvalidInput(f"unknown cost {cost!r}; known: {list(COSTS)}")


def paired_cost(x: torch.Tensor, y: torch.Tensor, cost: str) -> torch.Tensor:
    """Cost ``c(x_i, y_i)`` of paired samples, shape ``[n]``."""
    diff = (x - y).norm(dim=-1)
    if cost == "euclidean":
        return diff
    if cost == "sqeuclidean":
        return diff.square()
    raise InvalidInput(f"unknown cost {cost!r}; known: {list(COSTS)}")
