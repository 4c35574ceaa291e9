"""A conformance kit for plugin authors, in the spirit of scikit-learn's ``check_estimator``.

One call checks a solver against the contract::

    from otbench.testing import check_solver
    check_solver(MySolver, params={"iterations": 50})

It builds small problems of every kind the solver declares (and one it does not, if any), solves them, and
checks that the solution holds the parts the solver declares, with the right shapes, finite values and on the
problem's device; that the same seed gives the same answer; and that an unsupported problem raises
``UnsupportedProblem`` rather than something obscure. ``check_task`` does the same for tasks. Both raise an
``AssertionError`` listing every violation, and return the list of checks that ran.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from otbench.api import PROBLEM_KINDS, SOLUTION_PARTS, Problem, Solution, Solver, Task, Truth, UnsupportedProblem
from otbench.costs import pairwise_cost
from otbench.env import seed_everything
from otbench.sampling import make_sampler_pair

__all__ = ["check_solver", "check_task", "toy_problem"]


def toy_problem(kind: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                seed: int = 0, cost: str = "euclidean", dim: int = 2) -> Problem:
    """A small problem of ``kind``: Gaussian to shifted Gaussian (continuous) or 24 x 32 random points."""
    device = torch.device(device)
    if kind == "continuous":
        shift = torch.full((dim,), 1.5, device=device, dtype=dtype)

        def draw_p(n: int, gen: torch.Generator) -> torch.Tensor:
            return torch.randn(n, dim, generator=gen, device=device, dtype=dtype)

        def draw_q(n: int, gen: torch.Generator) -> torch.Tensor:
            return draw_p(n, gen) + shift

        sp, sq, _, _ = make_sampler_pair(draw_p, draw_q, seed, device)
        return Problem("continuous", dim, cost, device, dtype, sample_p=sp, sample_q=sq, seed=seed)
    if kind == "discrete":
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(24, dim, generator=gen, dtype=torch.float64)
        y = torch.rand(32, dim, generator=gen, dtype=torch.float64) + 0.25
        c = pairwise_cost(x, y, cost)
        c = c.to(device=device, dtype=dtype)
        a = torch.full((24,), 1 / 24, device=device, dtype=dtype)
        b = torch.full((32,), 1 / 32, device=device, dtype=dtype)
        return Problem("discrete", dim, cost, device, dtype, a=a, b=b, x=x.to(device, dtype), y=y.to(device, dtype),
                       cost_matrix=c, seed=seed)
    raise ValueError(f"unknown problem kind {kind!r}")


def _solve(solver_cls: type[Solver], params: Mapping[str, Any], problem: Problem) -> Solution:
    seed_everything(problem.seed)
    return solver_cls(**params).solve(problem)


def _check_parts(name: str, sol: Solution, problem: Problem, declared: frozenset[str], errors: list[str]) -> None:
    where = f"{name} on a {problem.kind} problem"
    missing = declared - sol.parts()
    if missing:
        errors.append(f"{where}: declared parts {sorted(missing)} are missing from the Solution")
    dev = problem.device.type
    n = 64
    if sol.distance is not None and not (isinstance(sol.distance, (int, float)) and math.isfinite(sol.distance)):
        errors.append(f"{where}: distance must be a finite float, got {sol.distance!r}")
    if sol.critic is not None and problem.kind == "continuous":
        out = sol.critic(problem.sample_p(n))
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n,):
            errors.append(f"{where}: critic must map [n, d] -> [n], got {getattr(out, 'shape', type(out))}")
        elif out.device.type != dev or not torch.isfinite(out).all():
            errors.append(f"{where}: critic output must be finite and on {dev}, got device {out.device}")
    if sol.map is not None and problem.kind == "continuous":
        x = problem.sample_p(n)
        out = sol.map(x)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            errors.append(f"{where}: map must map [n, d] -> [n, d], got {getattr(out, 'shape', type(out))}")
        elif out.device.type != dev or not torch.isfinite(out).all():
            errors.append(f"{where}: map output must be finite and on {dev}")
    if sol.plan is not None and problem.kind == "discrete":
        shape = (problem.cost_matrix.shape if problem.cost_matrix is not None
                 else (problem.x.shape[0], problem.y.shape[0]))
        plan = sol.plan
        if tuple(plan.shape) != tuple(shape):
            errors.append(f"{where}: plan shape {tuple(plan.shape)} != cost shape {tuple(shape)}")
        elif plan.device.type != dev or not torch.isfinite(plan).all() or (plan < 0).any():
            errors.append(f"{where}: plan must be finite, non-negative and on {dev}")
    if sol.plan_samples is not None:
        xs, ys = sol.plan_samples(n)
        if xs.shape != (n, problem.dim) or ys.shape != (n, problem.dim):
            errors.append(f"{where}: plan_samples(n) must return two [n, d] tensors, got {xs.shape}, {ys.shape}")
    if sol.iterations is not None and (not isinstance(sol.iterations, int) or sol.iterations < 0):
        errors.append(f"{where}: iterations must be a non-negative int, got {sol.iterations!r}")


def _same(a: Solution, b: Solution, problem: Problem) -> str | None:
    if a.distance is not None and b.distance is not None and not math.isclose(a.distance, b.distance, rel_tol=1e-6, abs_tol=1e-9):
        return f"distance {a.distance!r} vs {b.distance!r}"
    if a.critic is not None and b.critic is not None and problem.kind == "continuous":
        probe = torch.linspace(-2, 2, 16 * problem.dim, device=problem.device, dtype=problem.dtype).reshape(16, problem.dim)
        if not torch.allclose(a.critic(probe), b.critic(probe), rtol=1e-5, atol=1e-6):
            return "critic values differ"
    return None


def check_solver(solver_cls: type[Solver], params: Mapping[str, Any] | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Check ``solver_cls`` against the Solver contract; raise ``AssertionError`` listing every violation."""
    params = dict(params or {})
    errors: list[str] = []
    checks: list[str] = []
    name = getattr(solver_cls, "name", "") or solver_cls.__name__
    if not (isinstance(solver_cls, type) and issubclass(solver_cls, Solver)):
        raise AssertionError(f"{solver_cls!r} is not a Solver subclass")
    if not solver_cls.name:
        errors.append("Solver.name is empty")
    if not set(solver_cls.kinds) <= set(PROBLEM_KINDS):
        errors.append(f"{name}: kinds {sorted(solver_cls.kinds)} not within {PROBLEM_KINDS}")
    if not set(solver_cls.provides) <= set(SOLUTION_PARTS):
        errors.append(f"{name}: provides {sorted(solver_cls.provides)} not within {SOLUTION_PARTS}")
    unknown = set(params) - set(solver_cls.defaults)
    if unknown:
        errors.append(f"{name}: test params {sorted(unknown)} are not in Solver.defaults")
    try:
        solver_cls(no_such_parameter_xyz=1)
        errors.append(f"{name}: an unknown parameter was accepted silently")
    except Exception:
        pass
    checks.append("class attributes")
    device = torch.device(device)
    for kind in PROBLEM_KINDS:
        cost = "euclidean" if solver_cls.costs is None or "euclidean" in solver_cls.costs else sorted(solver_cls.costs)[0]
        problem = toy_problem(kind, device=device, dtype=dtype, cost=cost)
        if kind not in solver_cls.kinds:
            try:
                _solve(solver_cls, params, problem)
                errors.append(f"{name}: accepted a {kind} problem it does not declare")
            except UnsupportedProblem:
                pass
            except Exception as exc:
                errors.append(f"{name}: a {kind} problem must raise UnsupportedProblem, got {type(exc).__name__}: {exc}")
            checks.append(f"rejects {kind}")
            continue
        first = _solve(solver_cls, params, problem)
        _check_parts(name, first, problem, solver_cls.parts_for(kind), errors)
        checks.append(f"{kind}: declared parts, shapes, device")
        second = _solve(solver_cls, params, toy_problem(kind, device=device, dtype=dtype, cost=cost))
        diff = _same(first, second, problem)
        if diff:
            errors.append(f"{name}: not deterministic for a fixed seed on a {kind} problem ({diff})")
        checks.append(f"{kind}: deterministic for a seed")
    if solver_cls.costs is not None and "nonexistent_cost" not in solver_cls.costs:
        kind = sorted(solver_cls.kinds)[0]
        bad = toy_problem(kind, device=device, dtype=dtype)
        bad.cost = "nonexistent_cost"
        try:
            _solve(solver_cls, params, bad)
            errors.append(f"{name}: accepted cost 'nonexistent_cost' outside its declared costs")
        except UnsupportedProblem:
            pass
        except Exception as exc:
            errors.append(f"{name}: an unsupported cost must raise UnsupportedProblem, got {type(exc).__name__}")
        checks.append("rejects undeclared cost")
    if errors:
        raise AssertionError(f"{name} fails the otbench solver contract:\n  - " + "\n  - ".join(errors))
    return checks


def check_task(task_cls: type[Task], params: Mapping[str, Any] | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Check ``task_cls``: a seeded build gives identical problems, truth stays out of the Problem."""
    params = dict(params or {})
    errors: list[str] = []
    name = task_cls.name or task_cls.__name__
    device = torch.device(device)
    p1, t1 = task_cls(**params).build(0, device, dtype)
    p2, t2 = task_cls(**params).build(0, device, dtype)
    p3, _ = task_cls(**params).build(1, device, dtype)
    if not isinstance(p1, Problem) or not isinstance(t1, Truth):
        raise AssertionError(f"{name}.build must return (Problem, Truth), got ({type(p1)}, {type(t1)})")
    if p1.kind != task_cls.kind:
        errors.append(f"{name}: problem kind {p1.kind!r} != Task.kind {task_cls.kind!r}")
    if p1.kind == "continuous":
        a, b, c = p1.sample_p(32), p2.sample_p(32), p3.sample_p(32)
        if a.shape != (32, p1.dim) or a.device.type != device.type or a.dtype != dtype:
            errors.append(f"{name}: sample_p(32) gave {tuple(a.shape)} {a.dtype} on {a.device}")
        if not torch.equal(a, b):
            errors.append(f"{name}: the same seed gave different samples")
        if torch.equal(a, c):
            errors.append(f"{name}: different seeds gave identical samples")
        if t1.sample_p is not None and torch.equal(t1.sample_p(32), p1.sample_p(32)):
            errors.append(f"{name}: evaluation samples repeat the solver's stream")
    elif p1.cost_matrix is not None and p2.cost_matrix is not None and not torch.equal(p1.cost_matrix, p2.cost_matrix):
        errors.append(f"{name}: the same seed gave different cost matrices")
    if t1.distance is not None and not math.isfinite(t1.distance):
        errors.append(f"{name}: true distance is not finite")
    if errors:
        raise AssertionError(f"{name} fails the otbench task contract:\n  - " + "\n  - ".join(errors))
    return ["build types", "seeded reproducibility", "truth finite"]
