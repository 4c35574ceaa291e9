"""otbench.testing.check_solver catches broken solvers and passes a correct one."""

from __future__ import annotations

import pytest
import torch

from otbench import Solution, Solver
from otbench.testing import check_solver, check_task
from otbench_plugins.w1.closed_form import GaussianShift
from otbench_plugins.discrete.exact_lp import ExactLP


def test_exact_lp_passes():
    checks = check_solver(ExactLP, {"n_samples": 64})
    assert "continuous: deterministic for a seed" in checks and "discrete: declared parts, shapes, device" in checks


def test_gaussian_shift_task_passes():
    check_task(GaussianShift, {"dim": 3})


class _MeanGap(Solver):
    name = "mean_gap"
    provides = frozenset({"distance", "critic"})
    defaults = {"n": 128}

    def solve(self, problem):
        self.check_supported(problem)
        x, y = problem.sample_p(self.params["n"]), problem.sample_q(self.params["n"])
        w = (x.mean(0) - y.mean(0))
        w = w / w.norm()
        return Solution(distance=float((x @ w).mean() - (y @ w).mean()), critic=lambda z: z @ w)


def test_a_correct_minimal_solver_passes():
    check_solver(_MeanGap)


def test_missing_declared_part_is_caught():
    class NoCritic(_MeanGap):
        name = "no_critic"

        def solve(self, problem):
            sol = super().solve(problem)
            sol.critic = None
            return sol

    with pytest.raises(AssertionError, match=r"declared parts \['critic'\] are missing"):
        check_solver(NoCritic)


def test_nondeterminism_is_caught():
    class Noisy(_MeanGap):
        name = "noisy"
        calls = 0

        def solve(self, problem):
            sol = super().solve(problem)
            Noisy.calls += 1
            sol.distance += Noisy.calls  # differs between two runs with the same seed
            return sol

    with pytest.raises(AssertionError, match="not deterministic"):
        check_solver(Noisy)


def test_wrong_error_for_unsupported_kind_is_caught():
    class Sloppy(_MeanGap):
        name = "sloppy"

        def solve(self, problem):
            if problem.kind != "continuous":
                raise ValueError("no")
            return super().solve(problem)

    with pytest.raises(AssertionError, match="must raise UnsupportedProblem"):
        check_solver(Sloppy)


def test_wrong_shape_and_device_are_caught():
    class BadCritic(_MeanGap):
        name = "bad_critic"

        def solve(self, problem):
            sol = super().solve(problem)
            sol.critic = lambda z: torch.zeros(z.shape[0], 1)
            return sol

    with pytest.raises(AssertionError, match=r"critic must map \[n, d\] -> \[n\]"):
        check_solver(BadCritic)


def test_task_with_unseeded_sampling_is_caught():
    class Unseeded(GaussianShift):
        name = "unseeded"

        def build(self, seed, device, dtype):
            problem, truth = super().build(seed, device, dtype)
            problem.sample_p = lambda n: torch.randn(n, problem.dim, dtype=dtype)
            return problem, truth

    with pytest.raises(AssertionError, match="same seed gave different samples"):
        check_task(Unseeded)
