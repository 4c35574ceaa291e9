"""The example plugin's sliced W1 is known in closed form on a shift: test the value, not a wide range."""

from __future__ import annotations

import math
import sys

import torch

from conftest import ROOT
from otbench_plugins.w1.closed_form import GaussianShift

try:
    from otbench_example import SlicedWasserstein
except ImportError:  # not pip-installed here: load it from the repository (an import bug still fails)
    sys.path.insert(0, str(ROOT / "examples" / "otbench-example-plugin"))
    from otbench_example import SlicedWasserstein


def sliced_w1_of_a_shift(shift: float, dim: int) -> float:
    """E_theta |<m, theta>| for theta uniform on the sphere S^{d-1}: |m| Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2))."""
    return shift * math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)


def test_sliced_w1_of_a_shift_matches_its_closed_form():
    # Each projection of N(0, I) and N(m, I) is a 1-D shift by <m, theta>, whose W1 is |<m, theta>|; so sliced W1
    # = E|<m, theta>| = 0.8488 for |m| = 2 in 4-D (the old check accepted [0.2, 2.0]). Wrong implementations
    # caught: unnormalised directions (x sqrt(d)), unsorted projections (independent pairing, ~1.3), the squared
    # cost on a euclidean problem (~1.0), the full W1 (2.0). Measured on seeds 0-2: 0.872, 0.878, 0.846 (1000
    # directions: SE 0.017; 2048 samples per side: the empirical 1-D W1 is biased up by ~0.02).
    expected = sliced_w1_of_a_shift(2.0, 4)
    assert abs(expected - 0.8488) < 1e-4
    problem, _ = GaussianShift(dim=4, shift=2.0).build(0, torch.device("cpu"), torch.float32)
    value = SlicedWasserstein(n_samples=2048, n_projections=1000).solve(problem).distance
    assert abs(value - expected) < 0.06, value
