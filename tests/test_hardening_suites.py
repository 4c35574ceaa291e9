"""A hostile user's suites: every malformed kind is rejected by `validate` with a message that names the key and
what was expected (issue 13, items 5-8). Each row would pass, or crash with a traceback, in a loader that
trusted the YAML (the wrong implementation each row guards against is named in its id)."""

from __future__ import annotations

import pytest

from otbench.registry import get_registry
from otbench.suite import SuiteError, load_suite, plan_runs, validate_suite

BASE = """name: t
seeds: [0]
tasks: [{name: gaussian_shift, params: {dim: 2}}]
solvers: [{name: exact_lp, params: {n_samples: 32}}]
"""

T = "tasks: [{name: gaussian_shift, params: {dim: 2}}]\n"
S = "solvers: [{name: exact_lp, params: {n_samples: 32}}]\n"


def _swap(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new)


# (id, suite text, substrings the message must contain)
CASES = [
    ("not-a-mapping", "- a\n- b\n", ["a suite must be a YAML mapping"]),
    ("malformed-yaml", "name: [a\n", ["malformed YAML", "line"]),
    ("empty-file", "", ["a suite must be a YAML mapping", "NoneType"]),
    ("duplicate-top-key", "name: t\n" + BASE, ["duplicate key 'name'", "first at line 1", "again at line 2"]),
    ("duplicate-nested-key", _swap("{dim: 2}", "{dim: 2, dim: 3}"), ["duplicate key 'dim'"]),
    ("unknown-top-key", _swap("seeds:", "seed:"), ["seed: unknown key", "did you mean 'seeds'"]),
    ("missing-tasks", "name: t\n" + S, ["tasks: required key is missing"]),
    ("missing-name", T + S, ["name: required key is missing"]),
    ("empty-tasks", "name: t\ntasks: []\n" + S, ["tasks:", "at least 1 item"]),
    ("name-dotdot", _swap("name: t", "name: ../../x"), ["name: a suite name must be", "letters, digits"]),
    ("name-absolute", _swap("name: t", "name: /tmp/x"), ["name: a suite name must be"]),
    ("name-nested", _swap("name: t", "name: a/b/c"), ["name: a suite name must be"]),
    ("name-empty", _swap("name: t", 'name: ""'), ["name: a suite name must be"]),
    ("name-nul", _swap("name: t", 'name: "a\\0b"'), ["name: a suite name must be"]),
    ("name-dot", _swap("name: t", 'name: "."'), ["name: a suite name must be"]),
    ("name-not-string", _swap("name: t", "name: 123"), ["name:", "valid string"]),
    ("seed-negative", _swap("seeds: [0]", "seeds: [-1]"), ["seeds", "[0, 2^63 - 1]", "-1"]),
    ("seed-too-big", _swap("seeds: [0]", "seeds: [9223372036854775808]"), ["seeds", "[0, 2^63 - 1]"]),
    ("seed-bool", _swap("seeds: [0]", "seeds: [true]"), ["seeds.0", "valid integer"]),
    ("seed-string", _swap("seeds: [0]", 'seeds: ["1"]'), ["seeds.0", "valid integer"]),
    ("seed-float", _swap("seeds: [0]", "seeds: [2.0]"), ["seeds.0", "valid integer"]),
    ("seed-duplicate", _swap("seeds: [0]", "seeds: [1, 1]"), ["seed 1 is listed twice", "positions 0 and 1"]),
    ("seeds-empty", _swap("seeds: [0]", "seeds: []"), ["seeds", "at least 1 item"]),
    ("timeout-inf", BASE + "timeout: .inf\n", ["timeout must be a finite number", "inf"]),
    ("timeout-huge", BASE + "timeout: 1e300\n", ["timeout must be a finite number"]),
    ("timeout-negative", BASE + "timeout: -1\n", ["timeout must be a finite number"]),
    ("timeout-text", BASE + "timeout: fast\n", ["timeout", "valid number"]),
    ("threads-zero", BASE + "threads: 0\n", ["threads must be an integer in [1, 4096]"]),
    ("threads-bool", BASE + "threads: true\n", ["threads", "valid integer"]),
    ("device-unknown", BASE + "device: gpu\n", ["device", "'auto', 'cpu' or 'cuda'"]),
    ("dtype-unknown", BASE + "dtype: float16\n", ["dtype", "'float32' or 'float64'"]),
    ("metrics-empty", BASE + "metrics: []\n", ["metrics: an empty list would apply no metric", "omit 'metrics'"]),
    ("metrics-duplicate", BASE + "metrics: [distance_error, distance_error]\n", ["'distance_error' is listed twice"]),
    ("metric-unknown", BASE + "metrics: [distanse_error]\n", ["metrics[0]: unknown metric", "did you mean 'distance_error'"]),
    ("solver-unknown", _swap("name: exact_lp", "name: exact_lpp"), ["solvers[0].name: unknown solver", "did you mean 'exact_lp'"]),
    ("task-unknown", _swap("name: gaussian_shift", "name: gausian_shift"), ["tasks[0].name: unknown task", "did you mean"]),
    ("param-unknown", _swap("{dim: 2}", "{dimm: 2}"), ["tasks[0].params.dimm: unknown task parameter", "did you mean 'dim'"]),
    ("param-wrong-type", _swap("n_samples: 32", 'n_samples: "sixty-four"'),
     ["solvers[0].params.n_samples: expected an integer (like the default", "sixty-four"]),
    ("param-bool-for-int", _swap("n_samples: 32", "n_samples: true"), ["solvers[0].params.n_samples: expected an integer"]),
    ("param-int-too-big", _swap("n_samples: 32", "n_samples: 100000000000000000000"), ["n_samples", "below 2^63"]),
    ("param-negative-count", BASE.replace("solvers: [{name: exact_lp, params: {n_samples: 32}}]",
                                          "solvers: [{name: sinkhorn, params: {max_iter: -5}}]"),
     ["solvers[0].params.max_iter: expected a value >= 1", "-5"]),
    ("param-zero-dim", _swap("{dim: 2}", "{dim: 0}"), ["tasks[0].params.dim: expected a value >= 1"]),
    ("param-nan", _swap("{dim: 2}", "{dim: 2, shift: .nan}"), ["tasks[0].params.shift: expected a finite number"]),
    ("param-string-for-float", _swap("{dim: 2}", '{dim: 2, shift: "2"}'), ["tasks[0].params.shift: expected a number"]),
    ("param-number-for-string", _swap("{dim: 2}", "{dim: 2, cost: 3}"), ["tasks[0].params.cost: expected a string"]),
    ("params-not-mapping", _swap("params: {dim: 2}", "params: [1, 2]"), ["tasks.0.params", "valid dictionary"]),
    ("grid-empty", _swap("params: {dim: 2}", "grid: {dim: []}"), ["tasks[0].grid.dim: an empty list expands to no runs"]),
    ("grid-not-list", _swap("params: {dim: 2}", "grid: {dim: 2}"), ["tasks.0.grid.dim", "valid list"]),
    ("grid-duplicate-value", _swap("params: {dim: 2}", "grid: {dim: [2, 2]}"),
     ["tasks[0].grid.dim: value 2 is listed twice", "positions 0 and 1"]),
    ("grid-wrong-type", _swap("params: {dim: 2}", 'grid: {dim: [2, "x"]}'), ["tasks[0].grid.dim[1]: expected an integer"]),
    ("component-unknown-key", _swap("params: {n_samples: 32}", "param: {n_samples: 32}"),
     ["solvers.0.param: unknown key", "did you mean 'params'"]),
    ("duplicate-label", BASE.replace("solvers: [{name: exact_lp, params: {n_samples: 32}}]",
                                     "solvers: [{name: exact_lp}, {name: exact_lp, params: {n_samples: 64}}]"),
     ["solvers[1]: duplicate label 'exact_lp' (also solvers[0])"]),
    ("same-config-two-labels", BASE.replace(
        "solvers: [{name: exact_lp, params: {n_samples: 32}}]",
        "solvers: [{name: exact_lp, label: a, params: {n_samples: 32}}, {name: exact_lp, label: b, params: {n_samples: 32}}]"),
     ["solver 'a' and task 'gaussian_shift' / solver 'b' plan the same run", "one label would vanish"]),
    ("budget-unknown-device", BASE + "budgets: {gpu: {seeds: [0]}}\n", ["budgets.gpu", "'cpu' or 'cuda'"]),
    ("budget-unknown-label", BASE + "budgets: {cpu: {solvers: {exact_lq: {params: {n_samples: 8}}}}}\n",
     ["budgets.cpu.solvers.exact_lq: no solver labelled 'exact_lq'", "did you mean 'exact_lp'"]),
    ("budget-bad-seed", BASE + "budgets: {cpu: {seeds: [-3]}}\n", ["budgets.cpu.seeds", "[0, 2^63 - 1]"]),
    ("budget-bad-timeout", BASE + "budgets: {cuda: {timeout: .inf}}\n", ["budgets.cuda.timeout", "finite"]),
    ("budget-param-wrong-type", BASE + "budgets: {cpu: {solvers: {exact_lp: {params: {n_samples: many}}}}}\n",
     ["budgets.cpu.solvers.exact_lp.params.n_samples: expected an integer"]),
    ("huge-grid", _swap("params: {dim: 2}", "grid: {dim: [" + ", ".join(str(i) for i in range(1, 101)) + "], "
                        "shift: [" + ", ".join(f"{i}.5" for i in range(100)) + "]}").replace(
                            "seeds: [0]", "seeds: [" + ", ".join(str(i) for i in range(100)) + "]"),
     ["expands to 1,000,000 runs", "over the limit of 100,000", "--max-runs 1000000"]),
    ("top-level-non-string-key", BASE + "1: x\n", ["keys must be strings"]),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_suite_is_rejected_with_a_precise_message(tmp_path, text, expected):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError) as err:
        validate_suite(load_suite(path), get_registry(), path)
    message = str(err.value)
    assert message.startswith(str(path)), message  # every message names the file first
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"


def test_the_table_covers_at_least_45_kinds():
    assert len({c[0] for c in CASES}) == len(CASES) >= 45


def test_non_utf8_suite_is_a_clean_error(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"name: t\n\xff\xfe\n")
    with pytest.raises(SuiteError, match="not a UTF-8 text file"):
        load_suite(path)


def test_the_base_suite_is_valid_and_the_run_limit_is_counted_before_expanding(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(BASE)
    suite = load_suite(path)
    validate_suite(suite, get_registry(), path)
    assert len(plan_runs(suite, get_registry(), "cpu")) == 1
    huge = next(c[1] for c in CASES if c[0] == "huge-grid")
    path.write_text(huge)
    suite = load_suite(path)
    # a planner that expanded first would build 10^6 specs here (about a minute); counting refuses at once
    with pytest.raises(SuiteError, match="over the limit of 10"):
        plan_runs(suite, get_registry(), "cpu", max_runs=10)


def test_a_plugin_param_schema_refines_the_inferred_checks():
    from otbench.api import Solver
    from otbench.suite import check_params

    class Tuned(Solver):
        name = "tuned_for_test"
        defaults = {"eps": 0.1, "mode": "fast", "shift": 0.0}
        param_schema = {"eps": {"min": 1e-6, "max": 10.0}, "mode": {"choices": ["fast", "exact"]}}

    assert check_params(Tuned, {"eps": 0.5, "mode": "exact", "shift": -3.0}) == []  # shift may be negative
    problems = dict(check_params(Tuned, {"eps": -1.0, "mode": "fats"}))
    assert "expected a value >= 1e-06" in problems["eps"]
    assert "expected one of ['fast', 'exact']" in problems["mode"] and "did you mean 'fast'" in problems["mode"]
