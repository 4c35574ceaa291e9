"""Executors run a list of RunSpecs and hand each finished record to a callback (which stores it at once).

- ``InProcessExecutor``: runs in this process, timeouts via SIGALRM. The default; lowest overhead.
- ``ProcessPoolExecutor``: N spawned worker processes, each with cores // N torch threads. A run that passes
  its timeout, or whose worker dies (segfault, OOM killer, SIGKILL), is recorded as failed and its worker
  replaced; the other runs go on.

An executor is anything with ``run(specs, on_record)``; a distributed one plugs in the same way.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from typing import Any, Protocol

from otbench.registry import get_registry
from otbench.runner import execute_run, failed_record
from otbench.suite import RunSpec

OnRecord = Callable[[dict[str, Any]], None]


class Executor(Protocol):
    def run(self, specs: list[RunSpec], on_record: OnRecord) -> None: ...


class InProcessExecutor:
    def __init__(self, registry: Any = None) -> None:
        self.registry = registry

    def run(self, specs: list[RunSpec], on_record: OnRecord) -> None:
        registry = self.registry or get_registry()
        for spec in specs:
            on_record(execute_run(spec, registry, jobs=1))


def _worker(inbox: Any, outbox: Any, jobs: int) -> None:
    """Worker loop: take a RunSpec, put back (pid, record). ``None`` stops it.

    The worker loads plugins itself (the environment, OTBENCH_PLUGIN_MODULES included, is inherited).
    """
    registry = get_registry()
    outbox.put((os.getpid(), "ready"))
    while True:
        spec = inbox.get()
        if spec is None:
            return
        # The in-worker alarm stops Python-level overruns with an exact record; the parent kills the worker
        # as a backstop when native code ignores the alarm.
        outbox.put((os.getpid(), execute_run(spec, registry, jobs=jobs)))


class _Worker:
    def __init__(self, ctx: Any, outbox: Any, jobs: int) -> None:
        self.inbox = ctx.Queue()
        self.process = ctx.Process(target=_worker, args=(self.inbox, outbox, jobs), daemon=True)
        self.process.start()
        self.spec: RunSpec | None = None
        self.started = 0.0

    def assign(self, spec: RunSpec) -> None:
        self.spec, self.started = spec, time.monotonic()
        self.inbox.put(spec)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)


class ProcessPoolExecutor:
    """Local process pool. A worker is killed ``grace`` seconds after its run's timeout (the run's task build
    and set-up count here, so the default is generous; the worker's own alarm normally fires first)."""

    def __init__(self, jobs: int, grace: float = 30.0, max_idle_deaths: int = 3) -> None:
        self.jobs, self.grace, self.max_idle_deaths = max(1, jobs), grace, max_idle_deaths
        self._idle_deaths = 0

    def run(self, specs: list[RunSpec], on_record: OnRecord) -> None:
        ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
        outbox = ctx.Queue()
        pending = list(reversed(specs))
        workers: dict[int, _Worker] = {}

        def spawn() -> None:
            w = _Worker(ctx, outbox, self.jobs)
            workers[w.process.pid] = w

        for _ in range(min(self.jobs, len(specs))):
            spawn()
        try:
            while pending or any(w.spec is not None for w in workers.values()):
                try:
                    pid, payload = outbox.get(timeout=0.2)
                except queue.Empty:
                    pid, payload = None, None
                if pid in workers:
                    w = workers[pid]
                    if isinstance(payload, dict):
                        w.spec = None
                        on_record(payload)
                    if w.spec is None and pending:
                        w.assign(pending.pop())
                self._reap(workers, on_record, spawn, pending)
        finally:
            for w in workers.values():
                if w.process.is_alive():
                    w.inbox.put(None)
            for w in workers.values():
                w.process.join(timeout=5)
                w.kill()

    def _reap(self, workers: dict[int, _Worker], on_record: OnRecord, spawn: Callable[[], None],
              pending: list[RunSpec]) -> None:
        """Record and replace workers that timed out or died."""
        now = time.monotonic()
        for pid, w in list(workers.items()):
            if w.spec is not None and now - w.started > w.spec.timeout + self.grace:
                w.kill()
                on_record(failed_record(w.spec, f"timeout: run exceeded its timeout of {w.spec.timeout:g} s "
                                                f"(worker killed after {now - w.started:.1f} s)"))
                w.spec = None
                del workers[pid]
            elif not w.process.is_alive():
                code = w.process.exitcode
                how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                if w.spec is not None:
                    on_record(failed_record(w.spec, f"worker process died ({how}) during the run"))
                    w.spec = None
                else:
                    self._idle_deaths += 1
                    if self._idle_deaths >= self.max_idle_deaths:
                        raise RuntimeError(f"otbench worker processes keep dying before running anything ({how})")
                del workers[pid]
            else:
                continue
            if pending:
                spawn()
