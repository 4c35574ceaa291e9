from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent



@pytest.fixture(autouse=True)
def _one_thread():
    """Tests run small models: one torch thread is fastest here, and the runner may change it per run."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def fault_registry(monkeypatch):
    """A registry with the built-ins plus the misbehaving solvers of tests/fault_plugins.py."""
    from otbench.registry import get_registry

    monkeypatch.setenv("OTBENCH_PLUGIN_MODULES", "fault_plugins")
    registry = get_registry(refresh=True)
    yield registry
    monkeypatch.delenv("OTBENCH_PLUGIN_MODULES")
    get_registry(refresh=True)


def otbench_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300,
                check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed CLI in a subprocess, with tests/ importable (for fault_plugins)."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "otbench.cli", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"otbench {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_suite(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
