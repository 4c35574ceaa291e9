"""Suite loading and validation: every error names the file, the key path and what was expected."""

from __future__ import annotations

import pytest

from conftest import ROOT, write_suite
from otbench.registry import get_registry
from otbench.suite import SuiteError, load_suite, plan_runs, validate_suite

GOOD = """
name: t
seeds: [0, 1]
tasks:
  - name: gaussian_shift
    label: g
    grid: {dim: [2, 3]}
solvers:
  - name: exact_lp
    label: lp
    params: {n_samples: 64}
budgets:
  cpu:
    seeds: [0]
    tasks: {g: {grid: {dim: [2]}}}
  cuda:
    solvers: {lp: {params: {n_samples: 128}}}
"""


def _check(tmp_path, text):
    path = write_suite(tmp_path / "suite.yaml", text)
    suite = load_suite(path)
    validate_suite(suite, get_registry(), path)
    return suite


def _error(tmp_path, text) -> str:
    with pytest.raises(SuiteError) as info:
        _check(tmp_path, text)
    msg = str(info.value)
    assert str(tmp_path / "suite.yaml") in msg  # every message names the file
    return msg


def test_budgets_select_grid_seeds_and_params(tmp_path):
    suite = _check(tmp_path, GOOD)
    cpu = plan_runs(suite, get_registry(), "cpu")
    cuda = plan_runs(suite, get_registry(), "cuda")
    assert len(cpu) == 1 and cpu[0].task_params["dim"] == 2 and cpu[0].solver_params["n_samples"] == 64
    assert len(cuda) == 4 and {r.solver_params["n_samples"] for r in cuda} == {128}
    assert {(r.task_params["dim"], r.seed) for r in cuda} == {(2, 0), (2, 1), (3, 0), (3, 1)}
    assert cpu[0].budget == "cpu" and cuda[0].budget == "cuda"


def test_run_keys_are_stable_and_distinct(tmp_path):
    suite = _check(tmp_path, GOOD)
    a = [r.key for r in plan_runs(suite, get_registry(), "cuda")]
    b = [r.key for r in plan_runs(suite, get_registry(), "cuda")]
    assert a == b and len(set(a)) == len(a)
    # a default written out explicitly is the same run
    explicit = _check(tmp_path, GOOD.replace("{n_samples: 64}", "{n_samples: 64, max_iter: null}"))
    assert plan_runs(explicit, get_registry(), "cpu")[0].key == plan_runs(suite, get_registry(), "cpu")[0].key


def test_malformed_yaml_names_line(tmp_path):
    msg = _error(tmp_path, "name: t\ntasks: [\n  - x: :\n")
    assert "malformed YAML" in msg and "line" in msg


def test_unknown_top_level_key_suggests(tmp_path):
    msg = _error(tmp_path, GOOD + "seedz: [1]\n")
    assert "seedz" in msg and "did you mean 'seeds'" in msg


def test_unknown_nested_key(tmp_path):
    msg = _error(tmp_path, GOOD.replace("    label: lp\n", "    label: lp\n    parms: {}\n"))
    assert "solvers.0.parms" in msg and "did you mean 'params'" in msg


def test_wrong_type(tmp_path):
    msg = _error(tmp_path, GOOD.replace("seeds: [0, 1]", "seeds: lots"))
    assert "seeds" in msg and "lots" in msg


def test_wrong_device_policy(tmp_path):
    msg = _error(tmp_path, "device: tpu\n" + GOOD)
    assert "device" in msg and "'auto'" in msg


def test_unknown_names_suggest_nearest(tmp_path):
    msg = _error(tmp_path, GOOD.replace("name: exact_lp", "name: exact_pl").replace("name: gaussian_shift", "name: gaussian_shfit"))
    assert "solvers[0].name" in msg and "did you mean 'exact_lp'" in msg
    assert "tasks[0].name" in msg and "did you mean 'gaussian_shift'" in msg
    msg = _error(tmp_path, GOOD + "metrics: [distance_eror]\n")
    assert "metrics[0]" in msg and "did you mean 'distance_error'" in msg


def test_unknown_parameter_suggests(tmp_path):
    msg = _error(tmp_path, GOOD.replace("{n_samples: 64}", "{n_sample: 64}"))
    assert "solvers[0].params.n_sample" in msg and "did you mean 'n_samples'" in msg


def test_grid_that_expands_to_nothing(tmp_path):
    msg = _error(tmp_path, GOOD.replace("grid: {dim: [2, 3]}", "grid: {dim: []}"))
    assert "tasks[0].grid.dim" in msg and "no runs" in msg


def test_budget_with_unknown_label(tmp_path):
    msg = _error(tmp_path, GOOD.replace("tasks: {g:", "tasks: {h:"))
    assert "budgets.cpu.tasks.h" in msg


def test_missing_required_and_empty_lists(tmp_path):
    msg = _error(tmp_path, "name: t\ntasks: []\n")
    assert "tasks" in msg and "solvers: required key is missing" in msg


def test_duplicate_labels(tmp_path):
    msg = _error(tmp_path, GOOD.replace("    label: lp\n", "    label: lp\n  - name: exact_lp\n    label: lp\n", 1))
    assert "duplicate label 'lp'" in msg


@pytest.mark.parametrize("suite", sorted((ROOT / "suites").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_suites_are_valid(suite):
    parsed = load_suite(suite)
    validate_suite(parsed, get_registry(), suite)
    assert plan_runs(parsed, get_registry(), "cpu") and plan_runs(parsed, get_registry(), "cuda")
