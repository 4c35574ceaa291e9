"""Seeded sampler streams. The solver and the metrics draw from independent streams derived from the run
seed, so a solver never sees the evaluation samples and every number is reproducible."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Draw = Callable[[int, torch.Generator], torch.Tensor]


def derive_seed(seed: int, *labels: str | int) -> int:
    """A 63-bit seed derived from ``seed`` and labels (stable across runs and platforms)."""
    entropy = [int(seed)] + [sum(ord(c) * 131**i for i, c in enumerate(str(lab))) % 2**32 for lab in labels]
    lo, hi = (int(v) for v in np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32))
    return (lo | (hi << 32)) & (2**63 - 1)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed))
    return gen


def stream(draw: Draw, seed: int, device: torch.device | str) -> Callable[[int], torch.Tensor]:
    """A sampler ``n -> tensor`` drawing from its own generator seeded with ``seed``."""
    gen = make_generator(seed, device)

    def sample(n: int) -> torch.Tensor:
        return draw(int(n), gen)

    return sample


def make_sampler_pair(
    draw_p: Draw, draw_q: Draw, seed: int, device: torch.device | str
) -> tuple[Callable[[int], torch.Tensor], ...]:
    """``(solver_p, solver_q, eval_p, eval_q)``: four independent seeded streams."""
    return tuple(
        stream(draw, derive_seed(seed, role, side), device)
        for role in ("solver", "eval")
        for side, draw in (("p", draw_p), ("q", draw_q))
    )
