"""Solvers that misbehave on purpose, loaded as a plugin module (OTBENCH_PLUGIN_MODULES=fault_plugins)."""

from __future__ import annotations

import os
import platform
import signal
import threading
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


class KilledWhileReporting(_Base):
    """Returns a record of ``megabytes`` MB and is killed (SIGKILL) while one of its threads is blocked writing it
    to the parent (a write(2) of over 1 MB): the parent is left holding half a message. Linux x86-64/arm64 only
    (it watches /proc/self/task/*/syscall)."""
    name = "fault_killed_while_reporting"
    defaults = {**_Base.defaults, "megabytes": 64}
    WRITE = {"x86_64": 1, "aarch64": 64}

    def solve(self, problem):
        write = self.WRITE[platform.machine()]

        def in_big_write() -> bool:
            for tid in os.listdir("/proc/self/task"):
                if int(tid) == threading.get_native_id():  # this watching thread
                    continue
                try:
                    with open(f"/proc/self/task/{tid}/syscall") as f:
                        fields = f.read().split()
                except OSError:  # the thread ended
                    continue
                if fields and fields[0] == str(write) and int(fields[3], 16) > 2**20:
                    return True
            return False

        def kill_mid_send() -> None:
            while not in_big_write():
                time.sleep(0.0002)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=kill_mid_send, daemon=True).start()
        return Solution(distance=self.params["value"], info={"payload": "x" * (self.params["megabytes"] << 20)})


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
    for cls in (Raises, ReturnsNaN, Sleeps, KillsItself, KilledWhileReporting, Hangs, WrongType):
        register(cls)
