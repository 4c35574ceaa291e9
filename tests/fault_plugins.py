"""Solvers that misbehave on purpose, loaded as a plugin module (OTBENCH_PLUGIN_MODULES=fault_plugins)."""

from __future__ import annotations

import os
import signal
import time

from otbench import Solution, Solver, hookimpl


class _Base(Solver):
    kinds = frozenset({"continuous", "discrete"})
    provides = frozenset({"distance"})
    defaults = {"value": 1.0, "seconds": 0.0}


class Raises(_Base):
    """Raises an error."""
    name = "fault_raises"

    def solve(self, problem):
        raise RuntimeError("solver exploded on purpose")


class ReturnsNaN(_Base):
    """Returns a NaN distance."""
    name = "fault_nan"

    def solve(self, problem):
        return Solution(distance=float("nan"))


class Sleeps(_Base):
    """Sleeps for `seconds` in small steps, then returns `value`."""
    name = "fault_sleeps"

    def solve(self, problem):
        end = time.monotonic() + self.params["seconds"]
        while time.monotonic() < end:
            time.sleep(0.01)
        return Solution(distance=float(self.params["value"]))


class KillsItself(_Base):
    """Kills its own process with SIGKILL (like the OOM killer would)."""
    name = "fault_killed"

    def solve(self, problem):
        os.kill(os.getpid(), signal.SIGKILL)


class Hangs(_Base):
    """Blocks signals and sleeps: only killing the process stops it (like a stuck native call)."""
    name = "fault_hangs"

    def solve(self, problem):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(3600)


class WrongType(_Base):
    """Returns something that is not a Solution."""
    name = "fault_wrong_type"

    def solve(self, problem):
        return 42.0


@hookimpl
def otbench_register_solvers(register):
    for cls in (Raises, ReturnsNaN, Sleeps, KillsItself, Hangs, WrongType):
        register(cls)
