"""Runner behaviours a wrong harness would get wrong silently: error paths inside solve, device and thread
policy, memory measurement, and records reused across suite changes that are not in the run key.

Each test names the wrong implementation it catches. Solvers that misbehave on purpose are defined here and
registered into the in-process registry for the duration of one test (no plugin module needed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator

import pytest
import torch

from conftest import write_suite
from otbench import Solution, Solver
from otbench.api import UnsupportedProblem
from otbench.registry import get_registry
from otbench.runner import execute_run
from otbench.suite import load_suite, plan_runs, validate_suite

SUITE = """
name: strength_runner
seeds: [0]
timeout: {timeout}
metrics: {metrics}
tasks: [{{name: gaussian_shift, params: {{dim: 2}}}}]
solvers: [{{name: {solver}, params: {params}}}]
"""


class _Base(Solver):
    kinds = frozenset({"continuous"})
    provides = frozenset({"distance"})
    defaults: dict = {}


class RaisesMemoryError(_Base):
    name = "strength_memory_error"

    def solve(self, problem):
        raise MemoryError("could not allocate 64 GiB")


class UnsupportedInside(_Base):
    """Passes the declared checks, then finds out inside solve that it cannot handle the problem."""
    name = "strength_unsupported_inside"

    def solve(self, problem):
        raise UnsupportedProblem("this instance has a feature the solver cannot handle")


class InfiniteDistance(_Base):
    name = "strength_infinite"

    def solve(self, problem):
        return Solution(distance=float("inf"))


class ReportsThreads(_Base):
    """Returns the number of torch threads it ran with (``threads = None``: no preference)."""
    name = "strength_threads"
    threads = None

    def solve(self, problem):
        return Solution(distance=2.0, info={"torch_threads": float(torch.get_num_threads())})


class Allocates(_Base):
    """Allocates and touches ``mb`` megabytes, holds them a moment (the RSS sampler polls every 5 ms)."""
    name = "strength_allocates"
    defaults = {"mb": 96}

    def solve(self, problem):
        block = torch.ones(int(self.params["mb"]) * 2**18, dtype=torch.float32)  # 4 bytes each
        time.sleep(0.1)
        value = float(block[::4096].sum()) * 0 + 2.0
        del block
        return Solution(distance=value)


@contextlib.contextmanager
def registered(*classes: type) -> Iterator[object]:
    registry = get_registry()
    template = registry.solvers["exact_lp"]
    for cls in classes:
        registry.solvers[cls.name] = dataclasses.replace(template, cls=cls, plugin="strength_tests")
    try:
        yield registry
    finally:
        for cls in classes:
            registry.solvers.pop(cls.name, None)


def _spec(registry, tmp_path, solver: str, params: str = "{}", timeout: float = 60,
          metrics: str = "[distance_error]"):
    path = write_suite(tmp_path / f"{solver}.yaml", SUITE.format(timeout=timeout, metrics=metrics, solver=solver,
                                                              params=params))
    suite = load_suite(path)
    validate_suite(suite, registry, path)
    (spec,) = plan_runs(suite, registry, "cpu")
    return spec


# --------------------------------------------------------------------------------------------------------
# error paths inside solve


def test_memory_error_inside_solve_is_a_failed_out_of_memory_record(tmp_path):
    # Wrong implementation caught: MemoryError not told apart from other crashes (the report's failure list
    # must say "out of memory", so that a budget, not a bug, is blamed), or escaping the runner.
    with registered(RaisesMemoryError) as reg:
        rec = execute_run(_spec(reg, tmp_path, RaisesMemoryError.name), reg)
    assert rec["status"] == "failed"
    assert rec["error"].startswith("out of memory") and "64 GiB" in rec["error"]
    assert "MemoryError" in rec["traceback"]


def test_unsupported_problem_raised_inside_solve_is_a_skip_with_its_reason(tmp_path):
    # Wrong implementation caught: an UnsupportedProblem raised by solve (not by the declared kinds/costs)
    # recorded as a failure, which would count against the solver and be retried on every resume.
    with registered(UnsupportedInside) as reg:
        rec = execute_run(_spec(reg, tmp_path, UnsupportedInside.name), reg)
    assert rec["status"] == "skipped"
    assert rec["reason"] == "this instance has a feature the solver cannot handle"
    assert "error" not in rec or not rec["error"]


def test_infinite_distance_is_a_failure_not_a_result(tmp_path):
    # Wrong implementation caught: a finiteness check that only tests NaN (inf != inf is False), so an
    # overflowed solver would be stored as "ok" with an infinite error and rank last instead of failing.
    with registered(InfiniteDistance) as reg:
        rec = execute_run(_spec(reg, tmp_path, InfiniteDistance.name), reg)
    assert rec["status"] == "failed" and "non-finite distance" in rec["error"]


# --------------------------------------------------------------------------------------------------------
# device and threads


def test_cuda_requested_on_a_cpu_machine_is_refused(tmp_path, monkeypatch):
    # Wrong implementations caught: silently falling back to the CPU (a "cuda" leaderboard made on a CPU), or a
    # crash with a traceback instead of an error naming the device.
    from typer.testing import CliRunner

    from otbench.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, also where CUDA exists
    reg = get_registry()
    spec = dataclasses.replace(_spec(reg, tmp_path, "exact_lp", "{n_samples: 64}"), device="cuda")
    rec = execute_run(spec, reg)
    assert rec["status"] == "failed" and "cuda" in rec["error"].lower()
    suite = write_suite(tmp_path / "s.yaml", SUITE.format(timeout=60, metrics="[distance_error]",
                                                         solver="exact_lp", params="{n_samples: 64}"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(suite), "--results-dir", str(tmp_path / "r"), "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "cuda" in result.output.lower()
    assert not (tmp_path / "r" / "records.jsonl").exists()


@pytest.mark.parametrize("cores,jobs,requested,preference,expected", [
    (16, 4, "auto", None, 4),   # cores // jobs
    (16, 4, 8, None, 4),        # an explicit request is capped at the share too
    (16, 1, 3, None, 3),
    (16, 4, "auto", 1, 1),      # the solver's own preference (tiny MLPs) wins when smaller
    (16, 2, "auto", 32, 8),     # ... and is capped when larger
    (2, 8, "auto", None, 1),    # more jobs than cores: never 0
])
def test_thread_share_is_cores_over_jobs(monkeypatch, cores, jobs, requested, preference, expected):
    # Wrong implementations caught: every worker taking all cores (N jobs x all cores oversubscribes the machine
    # and makes every timing meaningless), an explicit request not capped, a share of 0.
    from otbench import env

    monkeypatch.setattr(env, "cpu_count", lambda: cores)
    assert env.choose_threads(requested, preference, jobs) == expected


def test_runner_applies_the_thread_share(tmp_path, monkeypatch):
    from otbench import env

    monkeypatch.setattr(env, "cpu_count", lambda: 8)
    with registered(ReportsThreads) as reg:
        spec = _spec(reg, tmp_path, ReportsThreads.name)
        rec = execute_run(spec, reg, jobs=4)
    assert rec["status"] == "ok"
    assert rec["info"]["torch_threads"] == 2 and rec["env"]["threads"] == 2


# --------------------------------------------------------------------------------------------------------
# measurements


def test_peak_memory_sees_an_allocation(tmp_path):
    # Wrong implementation caught: a peak-memory probe that never samples (peak = start, so peak_memory_mb = 0
    # for every run: ">= 0" holds by construction). 96 MB are allocated and touched inside solve.
    with registered(Allocates) as reg:
        rec = execute_run(_spec(reg, tmp_path, Allocates.name, "{mb: 96}"), reg)
    assert rec["status"] == "ok"
    assert 64 < rec["peak_memory_mb"] < 1024, rec["peak_memory_mb"]


# --------------------------------------------------------------------------------------------------------
# records reused across suite changes


def _cli_run(tmp_path, suite_text: str, results: str):
    from typer.testing import CliRunner

    from otbench.cli import app

    path = write_suite(tmp_path / "suite.yaml", suite_text)
    result = CliRunner().invoke(app, ["run", str(path), "--results-dir", str(tmp_path / results)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in (tmp_path / results / "records.jsonl").read_text().splitlines()]


def test_adding_a_metric_to_the_suite_does_not_reuse_records_without_it(tmp_path):
    # Wrong implementation caught: resume that treats a run as done although the suite now asks for a metric
    # the stored record never computed; the leaderboard then silently lacks the new column for those runs.
    def suite(metrics: str) -> str:
        return SUITE.format(timeout=60, metrics=metrics, solver="exact_lp", params="{n_samples: 64}")

    first = _cli_run(tmp_path, suite("[distance_error]"), "r")
    assert "distance_rel_error" in first[-1]["metrics"] and "grad_cos" not in first[-1]["metrics"]
    records = _cli_run(tmp_path, suite("[distance_error, w1_gradient]"), "r")
    assert "grad_cos" in records[-1]["metrics"]


def test_lowering_the_timeout_does_not_reuse_runs_that_exceed_it(tmp_path, fault_registry):
    # Wrong implementation caught: a leaderboard made under 'timeout: 0.5' that contains a run which took 1 s
    # (recorded earlier under a larger timeout): the budget the suite states is not the one its numbers obey.
    def suite(timeout: float) -> str:
        return SUITE.format(timeout=timeout, metrics="[distance_error]", solver="fault_sleeps",
                            params="{seconds: 1.0, value: 2.0}")

    first = _cli_run(tmp_path, suite(30), "r")
    assert first[-1]["status"] == "ok" and first[-1]["seconds"] >= 1.0
    records = _cli_run(tmp_path, suite(0.5), "r")
    assert len(records) == 2 and records[-1]["status"] == "failed"


def test_a_kind_mismatch_is_skipped_without_building_the_task(monkeypatch):
    # Wrong implementation caught: building every task before asking the solver (the applied suite built 204
    # image tasks only to skip them), or skipping without the reason.
    from otbench.registry import get_registry
    from otbench.runner import execute_run
    from otbench.suite import RunSpec
    from otbench_plugins.discrete.tasks import PointClouds

    def no_build(*args, **kwargs):
        raise AssertionError("the task was built although the solver cannot take its kind")

    monkeypatch.setattr(PointClouds, "build", no_build)
    registry = get_registry()
    spec = RunSpec(suite="s", task="point_clouds", task_label="pc", task_params={}, solver="wgan_gp",
                   solver_label="gp", solver_params={}, seed=0, device="cpu", dtype="float32", timeout=10.0,
                   threads=1, metrics=None, budget="default", code_version="0", key="k")
    record = execute_run(spec, registry)
    assert record["status"] == "skipped"
    assert "solves ['continuous'] problems, not 'discrete'" in record["reason"]
