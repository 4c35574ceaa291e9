"""Fault injection with real processes (issue 13, items 2-4): a run killed by the kernel, a killed or terminated
parent of a worker pool, a planted module in the working directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ROOT, TESTS, write_suite
from otbench.cli import app
from otbench.store import DIED_ERROR, ResultStore

OTBENCH = Path(sys.executable).parent / "otbench"

PLUGIN = '''
"""Writes started-<pid> into marker_dir, then sleeps: tells a test that a worker is inside a run."""
import os, time
from otbench import Solution, Solver, hookimpl

class TouchAndSleep(Solver):
    name = "touch_and_sleep"
    kinds = frozenset({"continuous"})
    defaults = {"marker_dir": "", "seconds": 60.0}

    def solve(self, problem):
        open(os.path.join(self.params["marker_dir"], f"started-{os.getpid()}"), "w").close()
        time.sleep(self.params["seconds"])
        return Solution(distance=1.0)

@hookimpl
def otbench_register_solvers(register):
    register(TouchAndSleep)
'''


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(TESTS), "COLUMNS": "200", **extra}


def test_a_run_that_kills_its_process_no_longer_blocks_the_suite(fault_registry, tmp_path):
    suite = write_suite(tmp_path / "s.yaml", """
name: died
seeds: [0]
tasks: [{name: gaussian_shift, params: {dim: 2}}]
solvers: [{name: fault_killed}, {name: exact_lp, params: {n_samples: 32}}]
""")
    out = tmp_path / "r"
    first = subprocess.run([sys.executable, "-m", "otbench.cli", "run", str(suite), "--results-dir", str(out)],
                           cwd=ROOT, env=_env(OTBENCH_PLUGIN_MODULES="fault_plugins"), capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == -signal.SIGKILL  # like the OOM killer: no handler, no record
    assert not list(ResultStore(out).records())
    # before: every rerun died on the same run and exact_lp never ran
    res = CliRunner().invoke(app, ["run", str(suite), "--results-dir", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "the process died during this run last time" in res.output and "--retry-failed" in res.output
    recs = {r["solver"]: r for r in ResultStore(out).records()}
    assert recs["fault_killed"]["status"] == "failed" and recs["fault_killed"]["error"] == DIED_ERROR
    assert recs["exact_lp"]["status"] == "ok"
    again = CliRunner().invoke(app, ["run", str(suite), "--results-dir", str(out)], catch_exceptions=False)
    assert "2 already done, 0 to run" in again.output  # a died run is retried only on request
    assert len(list(ResultStore(out).records())) == 2


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_pool_workers_exit_with_their_parent_and_never_import_from_the_working_directory(tmp_path, sig):
    plant = tmp_path / "cwd"
    plant.mkdir()
    planted = tmp_path / "PLANTED"
    (plant / "socket.py").write_text(f"open({str(planted)!r}, 'w').write('ran')\nraise ImportError('planted')\n")
    (tmp_path / "touch_plugin.py").write_text(PLUGIN)
    markers = tmp_path / "markers"
    markers.mkdir()
    suite = write_suite(tmp_path / "s.yaml", f"""
name: pool_death
seeds: [0, 1]
timeout: 120
tasks: [{{name: gaussian_shift, params: {{dim: 2}}}}]
solvers: [{{name: touch_and_sleep, params: {{marker_dir: {str(markers)!r}, seconds: 120.0}}}}]
""")
    proc = subprocess.Popen([str(OTBENCH), "run", str(suite), "--results-dir", str(tmp_path / "r"), "--jobs", "2",
                             "--plugin-module", str(tmp_path / "touch_plugin.py")],
                            cwd=plant, env={**os.environ, "COLUMNS": "200"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(markers.iterdir())) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        workers = [int(p.name.split("-")[1]) for p in markers.iterdir()]
        assert len(workers) == 2, proc.stderr.read() if proc.poll() is not None else "workers never started"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        deadline = time.monotonic() + 20
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        # before: both workers (~380 MB each) outlived a killed parent, holding the caller's stdout
        assert not any(_alive(w) for w in workers)
        if sig == signal.SIGTERM:  # handled like Ctrl-C: a clean stop that says how to resume
            assert proc.returncode == 130 and "interrupted" in err
        else:
            assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not planted.exists()  # a worker started with the working directory on sys.path ran socket.py
