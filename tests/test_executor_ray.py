"""The Ray executor against a real local Ray instance, and how ``--jobs auto`` chooses an executor.

One Ray instance serves the module (2 logical CPUs, 1 logical GPU on this CPU machine, dashboard off, temp
files in the test's temp folder); the CLI test starts and stops its own instance in a subprocess.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path

import pytest

from conftest import TESTS, otbench_cli, write_suite
from otbench.executors import (GroupedExecutor, InProcessExecutor, ProcessPoolExecutor, choose_executor, parse_jobs,
                               run_width)
from otbench.suite import load_suite, plan_runs, validate_suite

try:
    import ray
except ImportError:  # pragma: no cover - CI installs the extra
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed: pip install -e '.[ray]'")
#: only the plugins these tests use: each Ray worker imports them at start
PLUGIN_ENV = {"OTBENCH_PLUGIN_MODULES": "fault_plugins", "OTBENCH_LOAD_PLUGINS": "closed_form,exact_lp",
              "PYTHONPATH": str(TESTS), "RAY_AUTH_MODE": "disabled"}


def _specs(registry, path: Path, solvers_yaml: str, timeout: float = 30, seeds: str = "[0]", threads: str = "1",
           device: str = "cpu", tasks: str = "[{name: gaussian_shift, params: {dim: 2}}]"):
    write_suite(path, f"""
name: ray_test
seeds: {seeds}
timeout: {timeout}
threads: {threads}
metrics: [distance_error]
tasks: {tasks}
solvers:
{solvers_yaml}
""")
    suite = load_suite(path)
    validate_suite(suite, registry, path)
    return plan_runs(suite, registry, device)


def _ray_processes(needle: str, wait: float = 10.0) -> list[str]:
    """Command lines of live processes whose command line or environment contains ``needle`` (after giving
    exiting processes up to ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    while True:
        found = _scan(needle)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _scan(needle: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:  # gone, or not ours
            continue
        if needle in cmd or needle in env:
            found.append(f"{entry.name}: {cmd[:150]}")
    return found


# the tests without the module's Ray instance come first: its fixture narrows the plugins (and runs Ray) until
# the module ends
def test_missing_ray_says_how_to_install(monkeypatch, tmp_path):
    import sys

    from otbench.registry import get_registry

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    specs = _specs(get_registry(), tmp_path / "s.yaml", "  - {name: exact_lp}")
    with pytest.raises(ImportError, match=r"pip install -e '\.\[ray\]'"):
        choose_executor(specs, get_registry(), "ray")


@needs_ray
@pytest.mark.timeout(60)
@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_unreachable_cluster_fails_fast_naming_the_address(scheme):
    # Ray retries an unreachable head for minutes before giving up; the executor must fail at once and say where
    import socket

    from otbench.executors_ray import RayExecutor, RayUnavailable

    if ray.is_initialized():
        pytest.skip("Ray is already connected in this process")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    executor = RayExecutor(address=f"{scheme}127.0.0.1:{port}")
    with pytest.raises(RayUnavailable, match=rf"nothing answers at 127\.0\.0\.1:{port}"):
        executor._connect()
    assert not ray.is_initialized()


def test_jobs_auto_gives_each_thread_width_its_workers(monkeypatch, tmp_path):
    """On 4 cores: single-thread solvers get 4 workers, a solver without a preference runs in-process on all
    cores, an explicit --jobs keeps its meaning."""
    import otbench.executors as ex
    from otbench.registry import get_registry

    monkeypatch.setattr(ex, "cpu_count", lambda: 4)
    reg = get_registry()
    narrow = _specs(reg, tmp_path / "a.yaml", "  - {name: wgan_gp}", seeds="[0, 1, 2, 3, 4]", threads="auto")
    wide = _specs(reg, tmp_path / "b.yaml", "  - {name: exact_lp}", seeds="[0, 1]", threads="auto")
    assert {run_width(s, reg, 4) for s in narrow} == {1} and {run_width(s, reg, 4) for s in wide} == {4}
    executor, how = choose_executor(narrow + wide, reg)
    assert isinstance(executor, GroupedExecutor)
    (pool, pool_runs), (inproc, inproc_runs) = executor.groups
    # a wrong planner (one pool for all, or widest-need-for-all = in-process) fails here
    assert isinstance(pool, ProcessPoolExecutor) and pool.jobs == 4 and pool_runs == narrow
    assert isinstance(inproc, InProcessExecutor) and inproc_runs == wide
    assert "4 workers x 1 thread" in how and "in-process, 4 threads" in how
    two_threads = _specs(reg, tmp_path / "c.yaml", "  - {name: wgan_gp}", seeds="[0, 1, 2]", threads="2")
    executor, _ = choose_executor(two_threads, reg)
    assert isinstance(executor, ProcessPoolExecutor) and executor.jobs == 2
    assert isinstance(choose_executor(narrow, reg, jobs=1)[0], InProcessExecutor)  # --jobs 1: as before
    assert choose_executor(narrow, reg, jobs=3)[0].jobs == 3
    assert parse_jobs("auto") is None and parse_jobs("3") == 3
    # CUDA runs share the one local GPU by the solver's gpu_share: a whole GPU each -> one at a time, in-process
    on_gpu = _specs(reg, tmp_path / "d.yaml", "  - {name: wgan_gp}", seeds="[0, 1, 2, 3, 4]", threads="auto",
                    device="cuda")
    assert isinstance(choose_executor(on_gpu, reg)[0], InProcessExecutor)
    monkeypatch.setattr(reg.solver("wgan_gp").cls, "gpu_share", 0.3)  # three at once
    executor, _ = choose_executor(on_gpu, reg)
    assert isinstance(executor, ProcessPoolExecutor) and (executor.jobs, executor.max_workers) == (4, 3)
    with pytest.raises(ValueError, match="positive integer"):
        parse_jobs("0")
    with pytest.raises(ValueError, match="--executor inprocess"):
        choose_executor(narrow, reg, "inprocess", jobs=2)


@needs_ray
def test_cli_ray_resumes_and_leaves_no_ray_process(tmp_path):
    text = """
name: ray_cli
seeds: {seeds}
threads: 1
metrics: [distance_error]
tasks: [{{name: gaussian_shift, params: {{dim: 2}}}}]
solvers: [{{name: exact_lp, params: {{n_samples: 64}}}}]
"""
    from otbench.registry import get_registry
    from otbench.store import ResultStore

    out = tmp_path / "res"
    env = {**PLUGIN_ENV, "OTBENCH_TEST_MARK": uuid.uuid4().hex, "RAY_ADDRESS": ""}
    path = write_suite(tmp_path / "s.yaml", text.format(seeds="[0]"))
    done = plan_runs(load_suite(path), get_registry(), "cpu")
    with ResultStore(out) as store:  # an earlier session ran seed 0
        InProcessExecutor(get_registry()).run(done, store.append)
    write_suite(tmp_path / "s.yaml", text.format(seeds="[0, 1]"))
    second = otbench_cli("run", str(tmp_path / "s.yaml"), "--results-dir", str(out), "--executor", "ray", env=env,
                         check=True)
    assert "1 already done, 1 to run" in second.stderr and "executor: ray (local instance" in second.stderr
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the done run was not rerun
    # Ray's processes (gcs, raylet, workers) inherit the driver's environment: none may outlive the command
    assert not _ray_processes(env["OTBENCH_TEST_MARK"]), _ray_processes(env["OTBENCH_TEST_MARK"])


@pytest.fixture(scope="module")
def ray_registry(tmp_path_factory):
    """A local Ray instance for the module and a registry with the fault solvers (workers load the same)."""
    from otbench.registry import get_registry

    saved = {k: os.environ.get(k) for k in PLUGIN_ENV}
    os.environ.update(PLUGIN_ENV)
    temp = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, _temp_dir=str(temp), logging_level="WARNING")
    try:
        yield get_registry(refresh=True)
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_registry(refresh=True)
    # every Ray process of the instance (gcs, raylet, workers) carries the temp folder in its command line
    assert not _ray_processes(str(temp)), _ray_processes(str(temp))


@needs_ray
def test_ray_gives_the_same_records_as_in_process(ray_registry, tmp_path):
    from otbench.executors_ray import RayExecutor

    specs = _specs(ray_registry, tmp_path / "s.yaml", """
  - {name: exact_lp, label: lp64, params: {n_samples: 64}}
  - {name: exact_lp, label: lp128, params: {n_samples: 128}}
""", seeds="[0, 1]", tasks="[{name: gaussian_shift, params: {shift: 2.0, dim: 3}}]")
    local, remote = {}, {}
    InProcessExecutor(ray_registry).run(specs, lambda r: local.__setitem__(r["key"], r))
    RayExecutor(registry=ray_registry).run(specs, lambda r: remote.__setitem__(r["key"], r))
    # a wrong executor (records swapped between runs, seeds ignored, a run lost or doubled) changes these
    assert set(remote) == set(local) == {s.key for s in specs} and len(specs) == 4
    for key, rec in local.items():
        assert remote[key]["status"] == rec["status"] == "ok"
        assert remote[key]["metrics"] == rec["metrics"]
        assert (remote[key]["seed"], remote[key]["solver_label"]) == (rec["seed"], rec["solver_label"])
        # the suite's `threads: 1` is what Ray granted and what torch used
        assert remote[key]["ray"]["resources"] == {"CPU": 1.0} and remote[key]["env"]["threads"] == 1
        assert remote[key]["threads"] == rec["threads"] == 1


@needs_ray
def test_killed_worker_hung_run_and_timeouts_become_failed_records(ray_registry, tmp_path):
    from otbench.executors_ray import RayExecutor

    specs = _specs(ray_registry, tmp_path / "s.yaml", """
  - {name: fault_killed, label: killed}
  - {name: fault_hangs, label: hangs}
  - {name: fault_sleeps, label: slow, params: {seconds: 60}}
  - {name: fault_raises, label: raises}
  - {name: fault_sleeps, label: quick, params: {seconds: 0.0, value: 2.0}}
""", timeout=2.0)
    records: dict[str, list[dict]] = {}
    RayExecutor(registry=ray_registry, grace=2.0).run(specs, lambda r: records.setdefault(r["solver_label"], []).append(r))
    # exactly one record per run: none lost to a dead worker, none doubled by a late result after a kill
    assert {k: len(v) for k, v in records.items()} == {"killed": 1, "hangs": 1, "slow": 1, "raises": 1, "quick": 1}
    rec = {k: v[0] for k, v in records.items()}
    assert rec["killed"]["status"] == "failed" and "worker process died" in rec["killed"]["error"]
    # the hung run ignores the worker's alarm: only the driver's deadline and force-cancel end it
    assert rec["hangs"]["status"] == "failed" and "Ray task killed" in rec["hangs"]["error"]
    assert rec["slow"]["status"] == "failed" and rec["slow"]["error"].startswith("timeout")
    assert rec["raises"]["status"] == "failed" and "solver exploded on purpose" in rec["raises"]["error"]
    assert rec["quick"]["status"] == "ok" and rec["quick"]["metrics"]["distance_rel_error"] == 0.0


@needs_ray
def test_cuda_runs_ask_for_their_gpu_share(ray_registry, tmp_path, monkeypatch):
    from otbench.api import Solver
    from otbench.executors_ray import RayExecutor, run_gpus

    specs = _specs(ray_registry, tmp_path / "s.yaml", "  - {name: fault_sleeps, label: quick}", seeds="[0, 1]",
                   device="cuda")
    # the solver declares half a GPU (the driver reads the declaration; the worker only runs the task)
    monkeypatch.setattr(ray_registry.solver("fault_sleeps").cls, "gpu_share", 0.5)
    records = []
    # two runs of half a GPU each on a node with one (logical) GPU; the runs themselves fail here (no CUDA)
    RayExecutor(registry=ray_registry).run(specs, records.append)
    assert len(records) == 2
    for rec in records:  # what Ray granted: a wrong request (a whole GPU, or none) shows here
        assert rec["ray"]["resources"] == {"CPU": 1.0, "GPU": 0.5}, rec["ray"]
    # --gpu-share overrides the declaration; a request no node can meet fails at once instead of waiting forever
    too_big = []
    RayExecutor(registry=ray_registry, gpu_share=2.0).run(specs[:1], too_big.append)
    assert too_big[0]["status"] == "failed" and "asks for 2 GPU(s)" in too_big[0]["error"]

    class Small(Solver):
        gpu_share = 0.25

    cuda, cpu = specs[0], dataclasses.replace(specs[0], device="cpu")
    assert run_gpus(cuda, Small.gpu_share) == 0.25 and run_gpus(cuda, Solver.gpu_share) == 1.0
    assert run_gpus(cpu, Small.gpu_share) == 0.0 and run_gpus(cuda, Small.gpu_share, override=0.5) == 0.5
