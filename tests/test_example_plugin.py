"""A third-party package adds a solver without touching the core: install it, discover it, run it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, otbench_cli, write_suite

EXAMPLE = ROOT / "examples" / "otbench-example-plugin"


@pytest.fixture(scope="module")
def installed_example():
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                           "-e", str(EXAMPLE)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return True


def test_example_plugin_is_discovered(installed_example):
    plugins = otbench_cli("plugins", check=True).stdout
    assert "example" in plugins and "otbench-example-plugin" in plugins
    listing = otbench_cli("list", check=True).stdout
    assert "sliced_wasserstein" in listing and "uniform_cube_shift" in listing  # a solver and a task


def test_example_plugin_runs_in_a_suite_and_passes_conformance(installed_example, tmp_path):
    suite = write_suite(tmp_path / "s.yaml", """
name: third_party
seeds: [0]
tasks: [{name: gaussian_shift, params: {dim: 4, shift: 2.0}}, {name: uniform_cube_shift, params: {dim: 2, shift: 1.5}}]
solvers: [{name: sliced_wasserstein, params: {n_samples: 512}}, {name: exact_lp, params: {n_samples: 256}}]
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
