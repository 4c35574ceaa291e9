"""The plugin author's path (issue 13): discoverable parameters and metric needs, stale-code detection,
--plugin-module for a module in the current folder, and a conformance kit that catches what it used to pass."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_suite
from otbench import Problem, Solution, Solver, Task, Truth
from otbench.cli import app
from otbench.sampling import make_sampler_pair, stream
from otbench.store import ResultStore
from otbench.testing import check_solver, check_task

PLUGIN = '''
from otbench import Solution, Solver, hookimpl

class Const(Solver):
    """Returns a constant distance."""
    name = "const_for_author_test"
    kinds = frozenset({"continuous"})
    defaults = {"value": 1.0}

    def solve(self, problem):
        self.check_supported(problem)
        return Solution(distance=float(self.params["value"]) * VALUE_FACTOR)

VALUE_FACTOR = 1.0

@hookimpl
def otbench_register_solvers(register):
    register(Const)
'''

SUITE = """name: author
seeds: [0, 1]
tasks: [{name: gaussian_shift, params: {dim: 2, shift: 2.0}}]
solvers: [{name: const_for_author_test, params: {value: 2.0}}]
"""


def _cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def plugin_in_cwd(tmp_path, monkeypatch):
    """A plugin module lying in the current folder, not installed and not on PYTHONPATH."""
    from otbench.registry import get_registry

    (tmp_path / "author_plugin.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OTBENCH_PLUGIN_MODULES", raising=False)
    yield tmp_path
    import os
    import sys

    sys.modules.pop("author_plugin", None)
    os.environ.pop("OTBENCH_PLUGIN_MODULES", None)  # set by the CLI itself; monkeypatch restores the original
    get_registry(refresh=True)


def test_plugin_module_in_the_current_folder_loads_for_validate_and_run(plugin_in_cwd):
    suite = write_suite(plugin_in_cwd / "s.yaml", SUITE)
    # before: ModuleNotFoundError unless PYTHONPATH=. ; and `validate` had no --plugin-module at all
    res = _cli("validate", str(suite), "--plugin-module", "author_plugin")
    assert res.exit_code == 0 and "valid; 2 runs on cpu" in res.output, res.output
    res = _cli("run", str(suite), "--results-dir", "r", "--plugin-module", "author_plugin")
    assert res.exit_code == 0, res.output
    assert {r["status"] for r in ResultStore(plugin_in_cwd / "r").records()} == {"ok"}


def test_an_edited_plugin_is_rerun_not_served_from_the_cache(plugin_in_cwd):
    suite = write_suite(plugin_in_cwd / "s.yaml", SUITE)
    assert _cli("run", str(suite), "--results-dir", "r", "--plugin-module", "author_plugin").exit_code == 0
    same = _cli("run", str(suite), "--results-dir", "r", "--plugin-module", "author_plugin")
    assert "2 already done, 0 to run" in same.output and "warning" not in same.output
    (plugin_in_cwd / "author_plugin.py").write_text(PLUGIN.replace("VALUE_FACTOR = 1.0", "VALUE_FACTOR = 0.5"))
    kept = _cli("run", str(suite), "--results-dir", "r", "--plugin-module", "author_plugin", "--keep-stale")
    assert "2 already done, 0 to run" in kept.output
    # before: "2 already done, 0 to run" and the old numbers kept, unless the author knew to bump `version`
    edited = _cli("run", str(suite), "--results-dir", "r", "--plugin-module", "author_plugin")
    assert "2 finished run(s) were made with other source code of solver 'const_for_author_test'" in edited.output
    assert "0 already done, 2 to run" in edited.output and "bump the component's `version`" in edited.output
    hashes = {r["code_hash"] for r in ResultStore(plugin_in_cwd / "r").latest().values()}
    assert len(hashes) == 1  # the latest record of each run carries the new source hash


def test_show_prints_parameters_defaults_docstring_and_checks():
    res = _cli("show", "sinkhorn")
    assert res.exit_code == 0
    assert "max_iter = 1000  [type int, min 1]" in res.output and "epsilon = 0.01" in res.output
    assert "provides:" in res.output and "kinds:" in res.output
    metric = _cli("show", "w1_bounds")
    assert "Truth.extra: w1_lower_energy, w1_upper_mean_distance" in metric.output and "outputs:" in metric.output
    unknown = _cli("show", "sinkhorm")
    assert unknown.exit_code == 2 and "did you mean 'sinkhorn'" in unknown.output


def test_list_metrics_says_what_each_metric_needs():
    res = _cli("list", "metrics")
    assert res.exit_code == 0 and "needs" in res.output
    assert "Truth.extra: w1_lower_energy" in res.output  # keys written nowhere before


# -- the conformance kit -----------------------------------------------------------------------------------

class _ReplayTask(Task):
    """Evaluation samplers that replay the solver's stream: the solver would be scored on its own data."""

    name = "replay_for_test"
    defaults = {"share_generator": False}

    def build(self, seed, device, dtype):
        def draw(n, gen):
            return torch.randn(n, 2, generator=gen, dtype=dtype)

        if self.params["share_generator"]:  # the truth continues the very generator the solver draws from
            sp = sq = stream(draw, seed, device)
            ep, eq = sp, sq
        else:  # a second generator with the same seed: the first draws are identical
            sp, sq = stream(draw, seed, device), stream(draw, seed + 1, device)
            ep, eq = stream(draw, seed, device), stream(draw, seed + 1, device)
        return Problem("continuous", 2, "euclidean", device, dtype, sample_p=sp, sample_q=sq, seed=seed), \
            Truth(distance=1.0, sample_p=ep, sample_q=eq)


@pytest.mark.parametrize("shared", [False, True], ids=["same-seed", "shared-generator"])
def test_check_task_catches_evaluation_samples_replaying_the_solver_stream(shared):
    with pytest.raises(AssertionError, match="evaluation samples Truth.sample_p are samples of the solver's stream"):
        check_task(_ReplayTask, {"share_generator": shared})


def test_check_task_passes_independent_streams():
    class Fine(_ReplayTask):
        def build(self, seed, device, dtype):
            def draw(n, gen):
                return torch.randn(n, 2, generator=gen, dtype=dtype)

            sp, sq, ep, eq = make_sampler_pair(draw, draw, seed, device)
            return Problem("continuous", 2, "euclidean", device, dtype, sample_p=sp, sample_q=sq, seed=seed), \
                Truth(distance=0.0, sample_p=ep, sample_q=eq)

    assert check_task(Fine)


class _NaNPlan(Solver):
    name = "nan_plan_for_test"
    kinds = frozenset({"continuous"})
    provides = frozenset({"distance", "plan_samples"})

    def solve(self, problem):
        self.check_supported(problem)

        def plan_samples(n):
            x = problem.sample_p(n)
            return x, torch.full_like(x, float("nan"))

        return Solution(distance=float("nan"), plan_samples=plan_samples)


def test_check_solver_reports_nan_once_as_nan_not_as_nondeterminism():
    with pytest.raises(AssertionError) as err:
        check_solver(_NaNPlan)
    text = str(err.value)
    assert "plan_samples(n) returned NaN or inf" in text and "distance must be a finite Python float" in text
    assert "not deterministic" not in text  # was: a spurious "not deterministic (nan vs nan)"


def test_check_solver_and_the_runner_flag_undeclared_parts_and_tensor_distances(tmp_path):
    class Sloppy(Solver):
        name = "sloppy_for_test"
        kinds = frozenset({"continuous"})
        provides = frozenset({"distance"})

        def solve(self, problem):
            self.check_supported(problem)
            return Solution(distance=torch.tensor(1.0), map=lambda x: x)

    with pytest.raises(AssertionError) as err:
        check_solver(Sloppy)
    assert "parts ['map'] that are not declared" in str(err.value) and "return float(tensor)" in str(err.value)

    import dataclasses

    from otbench.registry import load_registry
    from otbench.runner import execute_run
    from otbench.suite import load_suite, plan_runs

    reg = load_registry()
    path = write_suite(tmp_path / "s.yaml", "name: x\ntasks: [{name: gaussian_shift}]\nsolvers: [{name: exact_lp}]\n")
    spec = plan_runs(load_suite(path), reg, "cpu")[0]
    reg.solvers["sloppy_for_test"] = dataclasses.replace(reg.solvers["exact_lp"], cls=Sloppy)
    rec = execute_run(dataclasses.replace(spec, solver="sloppy_for_test", solver_params={}), reg)
    assert rec["status"] == "ok" and isinstance(rec["metrics"]["distance"], float)
    assert any("does not declare" in w for w in rec["warnings"]) and any("Tensor" in w for w in rec["warnings"])
    json.dumps(rec["warnings"])


def test_the_readme_plugin_examples_pass_the_conformance_kit():
    """The README's solver and task, copied as they are, pass check_solver / check_task (docs that rot fail)."""
    import re

    from conftest import ROOT

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Writing a plugin"):text.index("## Layout")]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    check_solver(namespace["MySolver"], {"n_samples": 256})
    check_task(namespace["Shifted"], {"dim": 3, "shift": 2.0})
    problem, truth = namespace["Shifted"](dim=3, shift=2.0).build(0, torch.device("cpu"), torch.float64)
    assert abs(namespace["MySolver"](n_samples=20000).solve(problem).distance - truth.distance) < 0.05


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", ""])
def test_new_plugin_refuses_names_that_leave_its_folder(tmp_path, name):
    res = _cli("new-plugin", name, "--dir", str(tmp_path / "here"))
    assert res.exit_code == 2 and "must start with a letter" in res.output
    assert not (tmp_path / "escape").exists() and not (tmp_path / "here").exists()
