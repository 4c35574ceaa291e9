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
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from otbench.api import (INPUT_FORMS, PROBLEM_KINDS, SOLUTION_PARTS, Problem, Solution, Solver, Task, Truth,
                         UnsupportedProblem, published_problems)
from otbench.costs import pairwise_cost
from otbench.env import seed_everything
from otbench.sampling import make_sampler_pair

__all__ = ["check_solver", "check_task", "published_problems", "toy_problem"]


def _blobs(n: int, gen: torch.Generator, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
           shift: float = 0.0) -> torch.Tensor:
    """``n`` points of ``shape``: a two-mode mixture (vectors) or bright squares on a dark ground (images)."""
    if len(shape) == 1:
        modes = torch.tensor([-1.0, 1.0], dtype=dtype)[torch.randint(0, 2, (n,), generator=gen)]
        pts = torch.randn(n, shape[0], generator=gen, dtype=dtype) * 0.3 + modes[:, None] + shift
        return pts.to(device)
    c, h, w = shape
    img = torch.rand(n, c, h, w, generator=gen, dtype=dtype) * 0.1
    rows = torch.randint(0, h // 2, (n,), generator=gen)
    cols = torch.randint(0, w // 2, (n,), generator=gen)
    for i in range(n):
        r, q = int(rows[i]), int(cols[i]) + int(shift * (w // 4))
        img[i, :, r:r + h // 2, max(q, 0):q + w // 2] = 0.9
    return img.clamp(0, 1).reshape(n, -1).to(device)


def toy_problem(kind: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                seed: int = 0, cost: str = "euclidean", dim: int = 2, image: bool = False) -> Problem:
    """A small problem of ``kind`` (see ``otbench.api.PROBLEM_KINDS``).

    continuous: Gaussian to shifted Gaussian; discrete: 24 x 32 random points; generative: a latent N(0, I_2)
    to a two-mode mixture; adaptation / transfer: three labelled classes whose target is shifted. With
    ``image=True`` points are 1 x 16 x 16 images in [0, 1] (bright squares), flat as always.
    """
    device = torch.device(device)
    shape = (1, 16, 16) if image else (dim,)
    flat = math.prod(shape)
    vrange = (0.0, 1.0) if image else None
    if kind == "continuous":
        if image:
            sp, sq, _, _ = make_sampler_pair(lambda n, g: _blobs(n, g, shape, device, dtype),
                                             lambda n, g: _blobs(n, g, shape, device, dtype, shift=1.0), seed, device)
            return Problem("continuous", flat, cost, device, dtype, sample_p=sp, sample_q=sq, seed=seed,
                           shape=shape, value_range=vrange)
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
    if kind == "generative":
        latent = 2
        sp, sq, _, _ = make_sampler_pair(
            lambda n, g: torch.randn(n, latent, generator=g, dtype=dtype).to(device),
            lambda n, g: _blobs(n, g, shape, device, dtype), seed, device)
        return Problem("generative", flat, cost, device, dtype, sample_p=sp, sample_q=sq, seed=seed,
                       latent_dim=latent, shape=shape if image else None, value_range=vrange)
    if kind in ("adaptation", "transfer"):
        gen = torch.Generator().manual_seed(seed)
        n_classes, per_class = 3, 16

        def labelled(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
            labels = torch.arange(n_classes).repeat_interleave(per_class)
            if image:
                pts = _blobs(len(labels), gen, shape, torch.device("cpu"), dtype)
                pts = (pts.reshape(-1, *shape) * 0.5 + labels.to(dtype)[:, None, None, None] * 0.25).clamp(0, 1)
                pts = (pts + 0.05 * shift).clamp(0, 1).reshape(len(labels), -1)
            else:
                pts = torch.randn(len(labels), dim, generator=gen, dtype=dtype) * 0.3
                pts[:, 0] += 2.0 * labels.to(dtype)
                pts = pts + shift
            return pts.to(device), labels.to(device)

        x, x_labels = labelled(0.0)
        y, y_labels = labelled(0.5)
        return Problem(kind, flat, cost, device, dtype, x=x, y=y, x_labels=x_labels,
                       y_labels=y_labels if kind == "transfer" else None, n_classes=n_classes, seed=seed,
                       shape=shape if image else None, value_range=vrange)
    if kind == "barycenter":
        side = 8
        coords = (torch.arange(side, dtype=torch.float64) + 0.5) / side
        grid = torch.stack(torch.meshgrid(coords, coords, indexing="ij"), dim=-1).reshape(-1, 2)
        centres = torch.tensor([[0.3, 0.3], [0.7, 0.4], [0.5, 0.7]], dtype=torch.float64)
        bumps = torch.exp(-((grid[None] - centres[:, None]) ** 2).sum(-1) / (2 * 0.1**2))
        measures = bumps / bumps.sum(1, keepdim=True)
        weights = torch.full((3,), 1 / 3, dtype=torch.float64)
        cost_matrix = pairwise_cost(grid, grid, "sqeuclidean")
        return Problem("barycenter", 2, "sqeuclidean", device, dtype, x=grid.to(device, dtype),
                       cost_matrix=cost_matrix.to(device, dtype), measures=measures.to(device, dtype),
                       measure_weights=weights.to(device, dtype), grid_shape=(side, side), seed=seed)
    raise ValueError(f"unknown problem kind {kind!r}")


def _solve(solver_cls: type[Solver], params: Mapping[str, Any], problem: Problem) -> Solution:
    seed_everything(problem.seed)
    return solver_cls(**params).solve(problem)


def _check_parts(name: str, sol: Solution, problem: Problem, declared: frozenset[str], errors: list[str]) -> None:
    where = f"{name} on a {problem.kind} problem"
    missing = declared - sol.parts()
    if missing:
        errors.append(f"{where}: declared parts {sorted(missing)} are missing from the Solution")
    undeclared = sol.parts() - declared
    if undeclared:
        errors.append(f"{where}: the Solution holds parts {sorted(undeclared)} that are not declared in provides "
                      f"({sorted(declared)}); declare them (provides / provides_by_kind) or drop them")
    dev = problem.device.type
    n = 64
    if sol.distance is not None and not (isinstance(sol.distance, (int, float)) and not isinstance(sol.distance, bool)
                                         and math.isfinite(sol.distance)):
        kind = type(sol.distance).__name__
        errors.append(f"{where}: distance must be a finite Python float, got {kind} {sol.distance!r}"
                      + (" (return float(tensor))" if isinstance(sol.distance, torch.Tensor) else ""))
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
        pair = sol.plan_samples(n)
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair)):
            errors.append(f"{where}: plan_samples(n) must return a tuple of two tensors, got {type(pair).__name__}")
        else:
            xs, ys = pair
            if tuple(xs.shape) != (n, problem.dim) or tuple(ys.shape) != (n, problem.dim):
                errors.append(f"{where}: plan_samples(n) must return two [n, d] tensors, got {tuple(xs.shape)}, "
                              f"{tuple(ys.shape)}")
            elif not (torch.isfinite(xs).all() and torch.isfinite(ys).all()):
                bad = int((~torch.isfinite(xs)).any(1).sum() + (~torch.isfinite(ys)).any(1).sum())
                errors.append(f"{where}: plan_samples(n) returned NaN or inf ({bad} of {2 * n} points)")
            elif xs.device.type != dev or ys.device.type != dev:
                errors.append(f"{where}: plan_samples must be on {dev}, got {xs.device} and {ys.device}")
    if sol.generator is not None:
        out = sol.generator(n)
        if not isinstance(out, torch.Tensor) or out.shape[0] != n or out[0].numel() != problem.dim:
            errors.append(f"{where}: generator(n) must return [n, dim] or [n, *shape] with dim = {problem.dim}, "
                          f"got {getattr(out, 'shape', type(out))}")
        elif out.device.type != dev or not torch.isfinite(out).all():
            errors.append(f"{where}: generator output must be finite and on {dev}")
        else:
            if problem.value_range is not None:
                lo, hi = problem.value_range
                slack = 1e-4 * (hi - lo)
                if out.min() < lo - slack or out.max() > hi + slack:
                    errors.append(f"{where}: generator output [{float(out.min()):.3g}, {float(out.max()):.3g}] "
                                  f"leaves the problem's value_range {problem.value_range}")
            if torch.equal(out, sol.generator(n)):
                errors.append(f"{where}: two successive generator(n) calls gave identical samples (not a stream)")
    if sol.classifier is not None and problem.n_classes:
        inputs = problem.y if problem.y is not None else problem.x
        out = sol.classifier(inputs[:n])
        rows = min(n, inputs.shape[0])
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (rows, problem.n_classes):
            errors.append(f"{where}: classifier must map [n, dim] -> [n, n_classes={problem.n_classes}], "
                          f"got {getattr(out, 'shape', type(out))}")
        elif out.device.type != dev or not torch.isfinite(out).all():
            errors.append(f"{where}: classifier scores must be finite and on {dev}")
    if sol.barycenter is not None and problem.kind == "barycenter":
        q = sol.barycenter
        n_support = problem.measures.shape[1]
        if not isinstance(q, torch.Tensor) or tuple(q.shape) != (n_support,):
            errors.append(f"{where}: barycenter must be a histogram [{n_support}], got {getattr(q, 'shape', type(q))}")
        elif q.device.type != dev or not torch.isfinite(q).all() or (q < 0).any():
            errors.append(f"{where}: barycenter must be finite, non-negative and on {dev}")
        elif abs(float(q.double().sum()) - 1.0) > 1e-3:
            errors.append(f"{where}: barycenter must sum to 1, sums to {float(q.double().sum()):.6g}")
    if sol.iterations is not None and (not isinstance(sol.iterations, int) or sol.iterations < 0):
        errors.append(f"{where}: iterations must be a non-negative int, got {sol.iterations!r}")


def _finite_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError, RuntimeError):
        return False


def _same(a: Solution, b: Solution, problem: Problem) -> str | None:
    """How two solutions of the same seeded problem differ, or None. Non-finite values are not compared here
    (``_check_parts`` reports them once, as what they are, instead of a spurious 'nan vs nan')."""
    if _finite_number(a.distance) and _finite_number(b.distance) and \
            not math.isclose(float(a.distance), float(b.distance), rel_tol=1e-6, abs_tol=1e-9):
        return f"distance {a.distance!r} vs {b.distance!r}"
    probe = torch.linspace(-2, 2, 16 * problem.dim, device=problem.device, dtype=problem.dtype).reshape(16, problem.dim)
    if problem.value_range is not None:
        probe = probe.clamp(*problem.value_range)
    if a.critic is not None and b.critic is not None and problem.kind == "continuous":
        if not torch.allclose(a.critic(probe), b.critic(probe), rtol=1e-5, atol=1e-6, equal_nan=True):
            return "critic values differ"
    if a.map is not None and b.map is not None and problem.kind == "continuous":
        if not torch.allclose(a.map(probe), b.map(probe), rtol=1e-5, atol=1e-6, equal_nan=True):
            return "map values differ"
    if a.generator is not None and b.generator is not None:
        if not torch.allclose(a.generator(16), b.generator(16), rtol=1e-5, atol=1e-6):
            return "generator draws differ (a generator must be seeded from the problem's seed)"
    if a.barycenter is not None and b.barycenter is not None and not torch.allclose(a.barycenter, b.barycenter):
        return "barycenters differ"
    if a.classifier is not None and b.classifier is not None:
        if not torch.allclose(a.classifier(probe), b.classifier(probe), rtol=1e-5, atol=1e-6):
            return "classifier scores differ"
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
    if solver_cls.inputs not in INPUT_FORMS:
        errors.append(f"{name}: inputs {solver_cls.inputs!r} not within {INPUT_FORMS}")
    device = torch.device(device)
    images = solver_cls.inputs == "images"
    for kind in PROBLEM_KINDS:
        cost = "euclidean" if solver_cls.costs is None or "euclidean" in solver_cls.costs else sorted(solver_cls.costs)[0]
        problem = toy_problem(kind, device=device, dtype=dtype, cost=cost, image=images and kind not in ("discrete", "barycenter"))
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
        second = _solve(solver_cls, params, toy_problem(kind, device=device, dtype=dtype, cost=cost,
                                                        image=images and kind not in ("discrete", "barycenter")))
        diff = _same(first, second, problem)  # before anything else draws from the solutions' streams
        if diff:
            errors.append(f"{name}: not deterministic for a fixed seed on a {kind} problem ({diff})")
        checks.append(f"{kind}: deterministic for a seed")
        _check_parts(name, first, problem, solver_cls.parts_for(kind), errors)
        checks.append(f"{kind}: declared parts, shapes, device")
        if images and kind not in ("discrete", "barycenter"):
            try:
                _solve(solver_cls, params, toy_problem(kind, device=device, dtype=dtype, cost=cost))
                errors.append(f"{name}: declares inputs='images' but accepted a {kind} problem of plain vectors")
            except UnsupportedProblem:
                pass
            except Exception as exc:
                errors.append(f"{name}: vectors given to an images-only solver must raise UnsupportedProblem, "
                              f"got {type(exc).__name__}: {exc}")
            checks.append(f"{kind}: rejects vectors")
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


def _shared_rows(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many rows of ``b`` are exactly rows of ``a``."""
    seen = {row.tobytes() for row in a.detach().cpu().reshape(a.shape[0], -1).numpy()}
    return sum(row.tobytes() in seen for row in b.detach().cpu().reshape(b.shape[0], -1).numpy())


def check_task(task_cls: type[Task], params: Mapping[str, Any] | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               published_for: Iterable[tuple[str, Mapping[str, Any]]] = ()) -> list[str]:
    """Check ``task_cls``: a seeded build gives identical problems, truth stays out of the Problem.

    ``published_for``: (solver name, solver params) pairs whose ``Task.published`` answer must be well formed
    (None, or ``{"source", "method", "metrics": {name: finite number}}``).
    """
    params = dict(params or {})
    errors: list[str] = []
    for solver_name, solver_params in published_for:
        errors += [f"{task_cls.name}: {solver_name}: {e}"
                   for e in published_problems(task_cls(**params).published(solver_name, dict(solver_params)))]
    name = task_cls.name or task_cls.__name__
    device = torch.device(device)
    p1, t1 = task_cls(**params).build(0, device, dtype)
    p2, t2 = task_cls(**params).build(0, device, dtype)
    p3, _ = task_cls(**params).build(1, device, dtype)
    if not isinstance(p1, Problem) or not isinstance(t1, Truth):
        raise AssertionError(f"{name}.build must return (Problem, Truth), got ({type(p1)}, {type(t1)})")
    if p1.kind != task_cls.kind:
        errors.append(f"{name}: problem kind {p1.kind!r} != Task.kind {task_cls.kind!r}")
    if p1.kind in ("continuous", "generative"):
        side = "sample_q" if p1.kind == "generative" else "sample_p"  # generative: sample_p is the latent
        a, b, c = getattr(p1, side)(32), getattr(p2, side)(32), getattr(p3, side)(32)
        if a.shape != (32, p1.dim) or a.device.type != device.type or a.dtype != dtype:
            errors.append(f"{name}: {side}(32) gave {tuple(a.shape)} {a.dtype} on {a.device}, "
                          f"expected ({32}, {p1.dim}) {dtype} on {device.type}")
        if not torch.equal(a, b):
            errors.append(f"{name}: the same seed gave different samples")
        if torch.equal(a, c):
            errors.append(f"{name}: different seeds gave identical samples")
        if p1.value_range is not None and (a.min() < p1.value_range[0] or a.max() > p1.value_range[1]):
            errors.append(f"{name}: samples leave the declared value_range {p1.value_range}")
        for ev in ("sample_p", "sample_q"):
            if p1.kind == "generative" and ev == "sample_p":
                continue
            # two fresh builds: the solver's first draws, and the truth's first draws made before any solver
            # draw of its own build (a truth sampler that shares the solver's generator then replays it too)
            solver_rows = getattr(task_cls(**params).build(0, device, dtype)[0], ev)(256)
            ev_sampler = getattr(task_cls(**params).build(0, device, dtype)[1], ev)
            if ev_sampler is None:
                continue
            shared = _shared_rows(solver_rows, ev_sampler(256))
            if shared > 128:  # a replayed stream shares all; independent draws from a finite pool share few
                errors.append(f"{name}: {shared} of 256 evaluation samples Truth.{ev} are samples of the solver's "
                              f"stream Problem.{ev}; draw the truth from its own stream "
                              "(otbench.sampling.make_sampler_pair gives four independent ones)")
        if p1.kind == "generative" and t1.sample_q is None:
            errors.append(f"{name}: a generative task must keep held-out data in Truth.sample_q")
    elif p1.kind in ("adaptation", "transfer"):
        if not torch.equal(p1.x, p2.x) or not torch.equal(p1.y, p2.y):
            errors.append(f"{name}: the same seed gave different training data")
        for label, pts, labels in (("source", p1.x, p1.x_labels), ("target test", t1.test_inputs, t1.test_labels)):
            if pts is None or labels is None:
                errors.append(f"{name}: {label} inputs or labels are missing")
                continue
            if pts.ndim != 2 or pts.shape[1] != p1.dim or labels.shape != (pts.shape[0],):
                errors.append(f"{name}: {label} inputs {tuple(pts.shape)} / labels {tuple(labels.shape)} are not "
                              f"[n, {p1.dim}] / [n]")
            elif labels.dtype != torch.int64 or labels.min() < 0 or labels.max() >= p1.n_classes:
                errors.append(f"{name}: {label} labels must be int64 in [0, {p1.n_classes})")
    elif p1.cost_matrix is not None and p2.cost_matrix is not None and not torch.equal(p1.cost_matrix, p2.cost_matrix):
        errors.append(f"{name}: the same seed gave different cost matrices")
    if t1.distance is not None and not math.isfinite(t1.distance):
        errors.append(f"{name}: true distance is not finite")
    if errors:
        raise AssertionError(f"{name} fails the otbench task contract:\n  - " + "\n  - ".join(errors))
    return ["build types", "seeded reproducibility", "truth finite"]
