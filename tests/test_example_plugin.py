"""A third-party package adds a solver without touching the core: install it, discover it, run it."""

from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, otbench_cli, write_suite

EXAMPLE = ROOT / "examples" / "otbench-example-plugin"


@pytest.fixture(scope="module")
def installed_example():
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                           "-e", str(EXAMPLE)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return True


@pytest.fixture(scope="module")
def nwc():
    """The example's NorthWestCorner class, imported in-process from the example folder."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        yield importlib.import_module("otbench_example").NorthWestCorner
    finally:
        sys.path.remove(str(EXAMPLE))


def test_example_plugin_is_discovered(installed_example):
    plugins = otbench_cli("plugins", check=True).stdout
    assert "example" in plugins and "otbench-example-plugin" in plugins
    listing = otbench_cli("list", check=True).stdout
    assert "sliced_wasserstein" in listing and "uniform_cube_shift" in listing  # a solver and a task
    assert "north_west_corner" in listing  # and the discrete-kind solver


def test_example_plugin_runs_in_a_suite_and_passes_conformance(installed_example, tmp_path):
    suite = write_suite(tmp_path / "s.yaml", """
name: third_party
seeds: [0]
tasks: [{name: gaussian_shift, params: {dim: 4, shift: 2.0}}, {name: uniform_cube_shift, params: {dim: 2, shift: 1.5}},
        {name: histograms_1d, params: {n: 64}}, {name: point_clouds, params: {n: 40, m: 50, dim: 2}}]
solvers: [{name: sliced_wasserstein, params: {n_samples: 512}}, {name: exact_lp, params: {n_samples: 256}},
          {name: north_west_corner}, {name: north_west_corner, label: nwc_diagonal, params: {direction: [1.0, 1.0]}}]
""")
    otbench_cli("run", str(suite), "--results-dir", str(tmp_path / "r"), "--strict", check=True)
    records = [json.loads(line) for line in (tmp_path / "r" / "records.jsonl").read_text().splitlines()]
    sliced = next(r for r in records if r["solver"] == "sliced_wasserstein" and r["task"] == "gaussian_shift")
    assert sliced["status"] == "ok" and sliced["plugins"]["solver"][0] == "example"
    # sliced W1 of a shift by m equals E|<m, theta>| < |m|: the leaderboard shows it biased low
    assert 0.2 < sliced["metrics"]["distance"] < 2.0
    # the plugin's task: exact LP on 256 uniform samples recovers W1 = |m| = 1.5 of a translation closely
    lp = next(r for r in records if r["solver"] == "exact_lp" and r["task"] == "uniform_cube_shift")
    assert lp["status"] == "ok" and lp["plugins"]["task"][0] == "example"
    assert lp["metrics"]["true_distance"] == 1.5 and lp["metrics"]["distance_rel_error"] < 0.1
    # the discrete solver: run by the runner on the discrete tasks and scored by the exact-LP metrics, skipped (not
    # failed) on the continuous ones. A transposed or mass-dropping plan would fail marginal_violation; a plan off
    # the monotone coupling would leave a clear lp_gap on the 1-D histograms. The suite runs in float32 (the plan
    # is rounded to float32 on return), hence 1e-6 here; the float64 bounds are checked in the tests below.
    nwc = {(r["solver_label"], r["task"]): r for r in records if r["solver"] == "north_west_corner"}
    nwc_1d = nwc["north_west_corner", "histograms_1d"]
    assert nwc_1d["status"] == "ok" and nwc_1d["plugins"]["solver"][0] == "example"
    assert abs(nwc_1d["metrics"]["lp_gap"]) < 1e-6 and nwc_1d["metrics"]["marginal_violation"] < 1e-6
    # a 2-entry direction does not fit 1-D points: that cell is skipped with the reason, not failed
    assert nwc["nwc_diagonal", "histograms_1d"]["status"] == "skipped"
    assert "direction has 2 entries" in nwc["nwc_diagonal", "histograms_1d"]["reason"]
    nwc_2d = [r for (label, task), r in nwc.items() if task == "point_clouds"]
    assert len(nwc_2d) == 2 and all(r["status"] == "ok" for r in nwc_2d)
    assert all(r["metrics"]["lp_gap"] > 1e-3 and r["metrics"]["marginal_violation"] < 1e-6 for r in nwc_2d)
    assert all(r["status"] == "skipped" for (label, task), r in nwc.items() if task == "gaussian_shift")
    check = subprocess.run([sys.executable, "-c", "from otbench.testing import check_solver, check_task;"
                            "from otbench_example import SlicedWasserstein as S, UniformCubeShift as T;"
                            "check_solver(S, {'n_samples': 128}); check_task(T); check_task(T, {'cost': 'sqeuclidean'})"],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr


def test_new_plugin_scaffold_is_a_working_plugin(tmp_path):
    made = otbench_cli("new-plugin", "otbench-my-solver", "--dir", str(tmp_path), check=True)
    root = tmp_path / "otbench-my-solver"
    assert str(root) in made.stdout
    assert 'otbench_my_solver = "otbench_my_solver"' in (root / "pyproject.toml").read_text()
    # its own conformance test passes, and its solver is a valid W1 lower bound on a known pair
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    again = otbench_cli("new-plugin", "otbench-my-solver", "--dir", str(tmp_path))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_scaffold_solver_is_exact_on_a_translation():
    import importlib
    import sys as _sys
    import tempfile
    from pathlib import Path

    import torch

    from otbench.scaffold import new_plugin
    from otbench_plugins.w1.closed_form import GaussianShift

    with tempfile.TemporaryDirectory() as tmp:
        root = new_plugin("otbench-shift-check", Path(tmp))
        _sys.path.insert(0, str(root))
        try:
            module = importlib.import_module("otbench_shift_check")
            problem, truth = GaussianShift(dim=3, shift=2.0).build(0, torch.device("cpu"), torch.float64)
            solution = module.OtbenchShiftCheckMeanDifference(n_samples=20000).solve(problem)
        finally:
            _sys.path.remove(str(root))
    assert abs(solution.distance - truth.distance) < 0.05  # W1 of a translation is |m| = 2


# -- the discrete-kind example solver, north_west_corner ---------------------------------------------------------

CPU = torch.device("cpu")


def test_north_west_corner_meets_the_solver_contract(nwc):
    from otbench.api import InvalidInput, Problem, UnsupportedProblem
    from otbench.testing import check_solver, toy_problem

    # check_solver runs it on the toy discrete problem (24 x 32 points in 2-D): parts, shape [n, m] (a transposed
    # plan fails there), non-negative, deterministic; it must refuse every other kind and an undeclared cost
    assert "discrete: declared parts, shapes, device" in check_solver(nwc)
    check_solver(nwc, {"direction": [1.0, -2.0]})
    # a bare cost matrix has nothing to sort: refused through supports() with the reason, never solved silently
    toy = toy_problem("discrete", dtype=torch.float64)
    bare = Problem("discrete", 2, "euclidean", CPU, torch.float64, a=toy.a, b=toy.b, cost_matrix=toy.cost_matrix)
    assert "only a cost_matrix" in nwc().supports(bare)
    with pytest.raises(UnsupportedProblem, match="only a cost_matrix"):
        nwc().solve(bare)
    assert "direction has 3 entries" in nwc(direction=[1.0, 0.0, 0.0]).supports(toy)
    # bad parameter values are rejected when the solver is made, naming the parameter
    for bad in ([0.0, 0.0], "diagonal", [1.0, float("nan")], [], [True, 1.0]):
        with pytest.raises(InvalidInput, match="direction"):
            nwc(direction=bad)


def test_north_west_corner_by_hand(nwc):
    # Unsorted 1-D supports, n != m. Sorted: x 0, 1, 2 (mass .5, .3, .2) and y -1, 1.5 (mass .6, .4); the corner
    # rule sends .5 (0 -> -1), .1 (1 -> -1), .2 (1 -> 1.5), .2 (2 -> 1.5), written back at the original indices.
    # Sweeping in index order (unsorted), not mapping back, a transposed [2, 3] plan, or dropping the last cell all
    # give another matrix.
    from otbench.api import Problem

    x = torch.tensor([[2.0], [0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[1.5], [-1.0]], dtype=torch.float64)
    a = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    b = torch.tensor([0.4, 0.6], dtype=torch.float64)
    problem = Problem("discrete", 1, "euclidean", CPU, torch.float64, a=a, b=b, x=x, y=y)
    sol = nwc().solve(problem)
    expected = torch.tensor([[0.2, 0.0], [0.0, 0.5], [0.2, 0.1]], dtype=torch.float64)  # columns: y = 1.5, -1
    assert torch.allclose(sol.plan, expected, atol=1e-15, rtol=0)
    assert sol.distance == pytest.approx(0.5 * 1.0 + 0.1 * 2.0 + 0.2 * 0.5 + 0.2 * 0.5, abs=1e-15)


def _shuffled(problem, truth, seed: int):
    """The same OT problem with both supports listed in a random order (the LP optimum does not change)."""
    from otbench.api import Truth

    gen = torch.Generator().manual_seed(seed)
    p, q = torch.randperm(problem.x.shape[0], generator=gen), torch.randperm(problem.y.shape[0], generator=gen)
    shuffled = dataclasses.replace(problem, a=problem.a[p], b=problem.b[q], x=problem.x[p], y=problem.y[q],
                                   cost_matrix=problem.cost_matrix[p][:, q])
    return shuffled, Truth(distance=truth.distance, extra={"cost_matrix": truth.extra["cost_matrix"][p][:, q]}), p, q


@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean"])
def test_north_west_corner_is_the_exact_lp_optimum_in_1d(nwc, cost):
    from otbench.metrics.lp import LPGap, MarginalViolation
    from otbench_plugins.discrete.tasks import Histograms1D

    problem, truth = Histograms1D(n=128, cost=cost).build(0, CPU, torch.float64)
    # histograms_1d lists its grid in increasing order, so a solver that forgot to sort would still look exact:
    # shuffle both supports; an unsorted sweep then has a large lp_gap, a plan left in sorted order too
    shuffled, shuffled_truth, p, q = _shuffled(problem, truth, seed=1)
    sol = nwc().solve(shuffled)
    gap = LPGap().compute(shuffled_truth, sol, shuffled)
    assert abs(gap["lp_gap"]) < 1e-9 and abs(gap["lp_gap_raw"]) < 1e-9  # the exact LP optimum, as returned
    assert abs(sol.distance - truth.distance) < 1e-9 * truth.distance
    # a and b differ, so a transposed plan (or a dropped remainder of mass) breaks the marginals
    assert MarginalViolation().compute(shuffled_truth, sol, shuffled)["marginal_violation"] < 1e-12
    unshuffled = torch.empty_like(sol.plan)
    unshuffled[p[:, None], q[None, :]] = sol.plan
    assert torch.allclose(unshuffled, nwc().solve(problem).plan, atol=1e-15, rtol=0)  # order does not matter
    if cost == "sqeuclidean":  # strictly convex cost: the optimal plan is unique, the LP's own plan
        assert torch.allclose(unshuffled, truth.plan, atol=1e-12, rtol=0)


def test_north_west_corner_is_feasible_but_not_optimal_in_2d(nwc):
    from otbench.metrics.lp import LPGap, MarginalViolation, PlanSparsity, marginal_errors
    from otbench_plugins.discrete.tasks import PointClouds

    # n != m and non-uniform weights: a transposed plan has the wrong shape, a dropped remainder misses a marginal
    problem, truth = PointClouds(n=60, m=80, dim=2, weights="random").build(0, CPU, torch.float64)
    for direction in (None, [0.0, 1.0], [1.0, 1.0]):
        sol = nwc(direction=direction).solve(problem)
        assert tuple(sol.plan.shape) == (60, 80) and float(sol.plan.min()) >= 0
        err_a, err_b = marginal_errors(sol.plan, problem.a, problem.b)
        assert err_a < 1e-12 and err_b < 1e-12
        # a vertex of the transport polytope: at most n + m - 1 non-zeros (a product coupling has n m)
        assert PlanSparsity().compute(truth, sol, problem)["plan_nnz"] <= 60 + 80 - 1
        assert MarginalViolation().compute(truth, sol, problem)["marginal_violation"] < 1e-12
        gap = LPGap().compute(truth, sol, problem)
        # feasible, so never below the LP optimum; sorting along one axis ignores the other: clearly above it
        assert sol.distance == pytest.approx(gap["plan_cost"], rel=1e-12)
        assert sol.distance >= truth.distance * (1 - 1e-12) and gap["lp_gap"] > 0.05
    # sorting by <x, (0, 1)> is sorting by the second coordinate: the default rule on the coordinates swapped
    swapped = dataclasses.replace(problem, x=problem.x[:, [1, 0]], y=problem.y[:, [1, 0]])
    assert torch.equal(nwc(direction=[0.0, 1.0]).solve(problem).plan, nwc().solve(swapped).plan)
    assert not torch.allclose(nwc(direction=[0.0, 1.0]).solve(problem).plan, nwc().solve(problem).plan)
