"""Faults never destroy results: each becomes a failed record and the suite goes on."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import time

import pytest

from conftest import TESTS, otbench_cli, write_suite
from otbench.executors import InProcessExecutor, ProcessPoolExecutor
from otbench.runner import execute_run
from otbench.suite import load_suite, plan_runs, validate_suite


def _specs(registry, tmp_path, solvers_yaml: str, timeout: float = 30, seeds="[0]"):
    path = write_suite(tmp_path / "s.yaml", f"""
name: faults
seeds: {seeds}
timeout: {timeout}
metrics: [distance_error]
tasks: [{{name: gaussian_shift, params: {{dim: 2}}}}]
solvers:
{solvers_yaml}
""")
    suite = load_suite(path)
    validate_suite(suite, registry, path)
    return plan_runs(suite, registry, "cpu")


def test_each_fault_becomes_a_failed_record(fault_registry, tmp_path):
    specs = _specs(fault_registry, tmp_path, """
  - {name: fault_raises}
  - {name: fault_nan}
  - {name: fault_wrong_type}
  - {name: fault_sleeps, label: slow, params: {seconds: 30}}
  - {name: exact_lp, params: {n_samples: 64}}
""", timeout=2.0)
    records = {}
    InProcessExecutor(fault_registry).run(specs, lambda r: records.__setitem__(r["solver_label"], r))
    assert records["fault_raises"]["status"] == "failed"
    assert "solver exploded on purpose" in records["fault_raises"]["error"]
    assert "Traceback" in records["fault_raises"]["traceback"]
    assert records["fault_nan"]["status"] == "failed" and "non-finite distance" in records["fault_nan"]["error"]
    assert records["fault_wrong_type"]["status"] == "failed" and "expected otbench.Solution" in records["fault_wrong_type"]["error"]
    assert records["slow"]["status"] == "failed" and records["slow"]["error"].startswith("timeout")
    assert records["exact_lp"]["status"] == "ok"  # the suite went on after every fault
    assert records["exact_lp"]["metrics"]["distance_rel_error"] < 0.5


def test_unsupported_pairing_is_skipped_with_reason(tmp_path):
    from otbench.registry import get_registry

    reg = get_registry()
    specs = _specs(reg, tmp_path, "  - {name: exact_lp}")
    spec = dataclasses.replace(specs[0], task_params={**specs[0].task_params, "cost": "euclidean"})
    # exact_lp supports euclidean: ok. A solver restricted to discrete problems must be skipped on this task:
    from otbench.api import Solver

    class DiscreteOnly(Solver):
        name = "discrete_only_for_test"
        kinds = frozenset({"discrete"})

    reg.solvers["discrete_only_for_test"] = dataclasses.replace(reg.solvers["exact_lp"], cls=DiscreteOnly)
    try:
        rec = execute_run(dataclasses.replace(spec, solver="discrete_only_for_test", solver_params={}), reg)
    finally:
        del reg.solvers["discrete_only_for_test"]
    assert rec["status"] == "skipped" and "continuous" in rec["reason"]


def test_record_carries_environment_and_measurements(tmp_path):
    from otbench.registry import get_registry

    reg = get_registry()
    rec = execute_run(_specs(reg, tmp_path, "  - {name: exact_lp, params: {n_samples: 128}}")[0], reg)
    assert rec["status"] == "ok"
    env = rec["env"]
    for field in ("otbench_version", "torch", "device", "device_name", "threads", "git_revision", "python"):
        assert field in env
    assert rec["seconds"] > 0 and rec["peak_memory_mb"] >= 0
    assert rec["plugins"]["solver"][0] == "exact_lp" and rec["primary_metric"][0] == "distance_rel_error"


def test_process_pool_records_timeouts_and_killed_workers(fault_registry, tmp_path):
    specs = _specs(fault_registry, tmp_path, """
  - {name: fault_killed}
  - {name: fault_sleeps, label: slow, params: {seconds: 60}}
  - {name: fault_sleeps, label: quick, params: {seconds: 0.0, value: 2.0}}
  - {name: fault_hangs, label: hangs}
  - {name: exact_lp, params: {n_samples: 64}}
""", timeout=2.0)
    records = {}
    ProcessPoolExecutor(jobs=2, grace=4.0).run(specs, lambda r: records.__setitem__(r["solver_label"], r))
    assert set(records) == {"fault_killed", "slow", "hangs", "quick", "exact_lp"}
    assert records["hangs"]["status"] == "failed" and "worker killed" in records["hangs"]["error"]
    assert records["fault_killed"]["status"] == "failed" and "signal 9" in records["fault_killed"]["error"]
    assert records["slow"]["status"] == "failed" and "timeout" in records["slow"]["error"]
    assert records["quick"]["status"] == "ok" and records["quick"]["metrics"]["distance_rel_error"] == 0.0
    assert records["exact_lp"]["status"] == "ok"


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "aarch64")),
                    reason="the fault watches /proc/self/task/*/syscall for write(2) (Linux x86-64 / arm64)")
@pytest.mark.timeout(180)
def test_process_pool_survives_a_worker_killed_while_sending_its_record(fault_registry, tmp_path):
    """A worker killed half-way through sending its record to the parent (the OOM killer does not wait) must not
    stop the other workers from reporting: each worker has its own channel, so the half message is dropped with
    the worker that wrote it (a channel shared by all workers stays locked, or garbled, for good)."""
    specs = _specs(fault_registry, tmp_path, """
  - {name: fault_killed_while_reporting}
  - {name: fault_sleeps, label: after, params: {seconds: 0.5, value: 2.0}}
  - {name: exact_lp, params: {n_samples: 64}}
""", timeout=60.0)
    records = {}
    ProcessPoolExecutor(jobs=2, grace=4.0).run(specs, lambda r: records.__setitem__(r["solver_label"], r))
    assert set(records) == {"fault_killed_while_reporting", "after", "exact_lp"}
    killed = records["fault_killed_while_reporting"]
    assert killed["status"] == "failed" and "signal 9" in killed["error"], killed
    assert records["after"]["status"] == "ok" and records["exact_lp"]["status"] == "ok"


def test_process_pool_replaces_workers_stuck_starting_up(fault_registry, tmp_path):
    """A worker that never reports ready (a plugin import that hangs, a stuck file system) is killed after the
    start-up timeout and replaced; workers that keep failing to start stop the pool with a message, not a hang."""
    specs = _specs(fault_registry, tmp_path, "  - {name: exact_lp, params: {n_samples: 64}}")
    pool = ProcessPoolExecutor(jobs=1, startup_timeout=0.3, max_idle_deaths=2)
    with pytest.raises(RuntimeError, match="keep dying before running anything .*not ready 0.3 s after"):
        pool.run(specs, lambda r: pytest.fail(f"no run can start, yet a record came: {r}"))


SLOW_SUITE = """
name: slow
seeds: [0, 1, 2, 3, 4, 5, 6, 7]
timeout: 30
metrics: [distance_error]
tasks: [{name: gaussian_shift, params: {dim: 2, shift: 2.0}}]
solvers: [{name: fault_sleeps, params: {seconds: 0.4, value: 2.0}}]
"""


def test_ctrl_c_then_resume_loses_nothing_and_duplicates_nothing(tmp_path):
    suite = write_suite(tmp_path / "slow.yaml", SLOW_SUITE)
    out = tmp_path / "res"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OTBENCH_PLUGIN_MODULES": "fault_plugins"}
    # A shell that starts jobs in the background makes them ignore SIGINT, and Python then installs no
    # KeyboardInterrupt handler: restore the default so the child behaves as under an interactive Ctrl-C.
    proc = subprocess.Popen([sys.executable, "-m", "otbench.cli", "run", str(suite), "--results-dir", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    records = out / "records.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if records.exists() and len(records.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    first = [json.loads(line) for line in records.read_text().splitlines()]
    assert 2 <= len(first) < 8 and all(r["status"] == "ok" for r in first)
    assert (out / "leaderboard.csv").exists()  # a partial report is written on interrupt

    again = otbench_cli("run", str(suite), "--results-dir", str(out), env={"OTBENCH_PLUGIN_MODULES": "fault_plugins"})
    assert again.returncode == 0, again.stderr
    assert f"{len(first)} already done, {8 - len(first)} to run" in again.stderr
    final = [json.loads(line) for line in records.read_text().splitlines()]
    assert len(final) == 8 and len({r["key"] for r in final}) == 8
    assert sorted(r["seed"] for r in final) == list(range(8))


def test_failures_are_kept_retried_on_request_and_strict_fails(tmp_path):
    suite = write_suite(tmp_path / "f.yaml", """
name: f
seeds: [0]
tasks: [{name: gaussian_shift}]
solvers: [{name: fault_raises}, {name: exact_lp, params: {n_samples: 32}}]
""")
    env = {"OTBENCH_PLUGIN_MODULES": "fault_plugins"}
    out = tmp_path / "r"
    first = otbench_cli("run", str(suite), "--results-dir", str(out), env=env)
    assert first.returncode == 0 and "1 run(s) failed" in first.stderr
    second = otbench_cli("run", str(suite), "--results-dir", str(out), "--strict", env=env)
    assert second.returncode == 1  # --strict still fails on a failure kept from an earlier session
    assert "2 already done, 0 to run" in second.stderr and "--retry-failed" in second.stderr
    retried = otbench_cli("run", str(suite), "--results-dir", str(out), "--retry-failed", "--strict", env=env)
    assert retried.returncode == 1
    assert "1 already done, 1 to run" in retried.stderr  # the failure is retried on request, the success is not
    forced = otbench_cli("run", str(suite), "--results-dir", str(out), "--force", env=env)
    assert "0 already done, 2 to run" in forced.stderr


def test_two_result_dirs_are_independent_and_one_dir_is_locked(tmp_path):
    from otbench.store import ResultStore, StoreLocked

    suite = write_suite(tmp_path / "s.yaml", """
name: s
seeds: [0, 1]
tasks: [{name: gaussian_shift}]
solvers: [{name: exact_lp, params: {n_samples: 32}}]
""")
    a, b = tmp_path / "a", tmp_path / "b"
    otbench_cli("run", str(suite), "--results-dir", str(a), check=True)
    otbench_cli("run", str(suite), "--results-dir", str(b), check=True)
    ra = [json.loads(x) for x in (a / "records.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (b / "records.jsonl").read_text().splitlines()]
    assert len(ra) == len(rb) == 2
    assert [r["metrics"]["distance"] for r in ra] == [r["metrics"]["distance"] for r in rb]  # seeded: identical
    with ResultStore(a):
        with pytest.raises(StoreLocked):
            with ResultStore(a):
                pass
        busy = otbench_cli("run", str(suite), "--results-dir", str(a))
        assert busy.returncode == 2 and "in use" in busy.stderr


def test_two_metrics_producing_one_name_is_an_error(tmp_path):
    from otbench.api import Metric
    from otbench.registry import load_registry

    class Shadow(Metric):
        """Claims an output name the core distance metric already produces."""
        name = "shadow_distance"
        needs = frozenset({"distance"})
        outputs = {"distance": "none"}

        def compute(self, truth, solution, problem):
            return {"distance": -1.0}

    reg = load_registry()
    reg.metrics["shadow_distance"] = dataclasses.replace(reg.metrics["distance_error"], cls=Shadow)
    spec = dataclasses.replace(_specs(reg, tmp_path, "  - {name: exact_lp, params: {n_samples: 32}}")[0],
                               metrics=("distance_error", "shadow_distance"))
    rec = execute_run(spec, reg)
    assert rec["status"] == "failed" and "already produced by metric 'distance_error'" in rec["error"]
    assert rec["metrics"]["distance"] > 0  # the first metric's value was not overwritten
