"""Executors run a list of RunSpecs and hand each finished record to a callback (which stores it at once).

- ``InProcessExecutor``: runs in this process, timeouts via SIGALRM. The default; lowest overhead.
- ``ProcessPoolExecutor``: N spawned worker processes, each with cores // N torch threads. A run that passes
  its timeout, or whose worker dies (segfault, OOM killer, SIGKILL), is recorded as failed and its worker
  replaced; the other runs go on.

- ``GroupedExecutor``: what ``--jobs auto`` builds (see ``choose_executor``): runs grouped by how many threads
  they want, each group on as many workers as the cores hold (single-thread solvers: one worker per core).
- ``otbench.executors_ray.RayExecutor``: one Ray task per run, on a local instance or a cluster (optional extra).

An executor is anything with ``run(specs, on_record, on_start=None)``; a distributed one plugs in the same way.
The in-process executor calls ``on_start(spec, attempt)`` before each run, so that the caller can mark the run as
started (a run during which the process is killed is then recognised on resume); executors whose workers are
other processes record a dead worker themselves and ignore it.

Workers exit when their parent dies (``PR_SET_PDEATHSIG`` on Linux, and a watchdog thread everywhere), and
they never put the working directory on ``sys.path`` (a ``socket.py`` lying in it must not run).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from otbench.env import cpu_count
from otbench.registry import get_registry
from otbench.runner import execute_run, failed_record
from otbench.suite import RunSpec

OnRecord = Callable[[dict[str, Any]], None]
OnStart = Callable[[RunSpec, str], None]


class Executor(Protocol):
    def run(self, specs: list[RunSpec], on_record: OnRecord, on_start: OnStart | None = None) -> None: ...


class InProcessExecutor:
    def __init__(self, registry: Any = None) -> None:
        self.registry = registry

    def run(self, specs: list[RunSpec], on_record: OnRecord, on_start: OnStart | None = None) -> None:
        registry = self.registry or get_registry()
        for spec in specs:
            attempt = uuid.uuid4().hex
            if on_start is not None:
                on_start(spec, attempt)
            on_record(execute_run(spec, registry, jobs=1, attempt=attempt))


def _die_with_parent(parent: int) -> None:
    """Make this worker exit when the process that started it dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="otbench-parent-watch", daemon=True).start()


def _worker(specs: Any, reports: Any, jobs: int, parent: int | None = None) -> None:
    """Worker loop: receive a RunSpec on ``specs``, send back "solving" when its timed part starts, then its
    record, on ``reports`` (this worker's own pipe). ``None`` (or the parent closing the pipe) stops it.

    The worker loads plugins itself (the environment, OTBENCH_PLUGIN_MODULES included, is inherited). Messages
    are sent from this thread, synchronously: no feeder thread, and no lock shared with other workers, so a
    worker killed half-way through a message (the OOM killer does not wait) can only garble its own pipe.
    """
    if parent is not None:
        _die_with_parent(parent)
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]  # never import from the working directory
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C means (and stops us)
    registry = get_registry()
    # the environment fingerprint runs `git status` once per process (seconds in a large checkout): do it before
    # the first run's clock starts, so that the parent's timeout backstop does not count it against the run
    import torch

    from otbench.env import environment

    environment(torch.device("cpu"), 1)
    reports.send("ready")
    while True:
        try:
            spec = specs.recv()
        except EOFError:  # the parent is gone or done
            return
        if spec is None:
            return
        # The in-worker alarm stops Python-level overruns with an exact record; the parent kills the worker
        # as a backstop when native code ignores the alarm.
        reports.send(execute_run(spec, registry, jobs=jobs, on_timed_start=lambda: reports.send("solving")))


@contextlib.contextmanager
def _safe_path() -> Iterator[None]:
    """Start interpreters with PYTHONSAFEPATH=1: a spawned worker (and multiprocessing's resource tracker)
    starts with ``python -c``, which would otherwise put the working directory first on ``sys.path`` before
    any of our code runs, so that a ``socket.py`` lying there would be imported."""
    previous = os.environ.get("PYTHONSAFEPATH")
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = previous


class _Gone:
    """Posted by a worker's reader thread when its pipe ends: the worker exited, was killed (possibly in the
    middle of a message, which is dropped) or sent something that cannot be read."""

    def __init__(self, why: str = "") -> None:
        self.why = why


class _Worker:
    """One worker process and its two pipes. A daemon thread reads the worker's reports and posts
    ``(pid, message)`` to the pool's event queue, then ``(pid, _Gone)`` when the pipe ends: a worker that stops
    half-way through a message blocks only its own reader, never the pool."""

    def __init__(self, ctx: Any, events: queue.Queue[tuple[int, Any]], jobs: int) -> None:
        spec_reader, self._spec_writer = ctx.Pipe(duplex=False)
        reports, report_writer = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_worker, args=(spec_reader, report_writer, jobs, os.getpid()), daemon=True)
        with _safe_path():
            self.process.start()
        # the worker holds its own copies: closing ours makes the reports pipe end (EOF) exactly when it is gone
        spec_reader.close()
        report_writer.close()
        self.pid: int = self.process.pid  # type: ignore[assignment]
        self.spec: RunSpec | None = None
        self.ready = False
        self.started = time.monotonic()  # of the process until it is ready, then of the run it was given
        self.dead_since: float | None = None
        threading.Thread(target=self._forward, args=(reports, events), name=f"otbench-reports-{self.pid}",
                         daemon=True).start()

    def _forward(self, reports: Any, events: queue.Queue[tuple[int, Any]]) -> None:
        try:
            while True:
                events.put((self.pid, reports.recv()))
        except (EOFError, OSError):  # the pipe ended, possibly mid-message
            events.put((self.pid, _Gone()))
        except Exception as exc:  # noqa: BLE001 - a message that cannot be unpickled
            events.put((self.pid, _Gone(f"it sent an unreadable message ({type(exc).__name__}: {exc})")))
        finally:
            reports.close()

    def assign(self, spec: RunSpec) -> bool:
        """Send ``spec`` to the worker; False if it is gone (its death is then reported by its reader)."""
        try:
            self._spec_writer.send(spec)
        except OSError:
            return False
        self.spec, self.started = spec, time.monotonic()
        return True

    def stop(self) -> None:
        """Ask an idle worker to exit."""
        with contextlib.suppress(OSError):
            self._spec_writer.send(None)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self._spec_writer.close()

    def death(self) -> str:
        """How the process ended, after ``kill``: e.g. 'signal 9' or 'exit code 1'."""
        code = self.process.exitcode
        if code is None:
            return "still running"
        return f"signal {-code}" if code < 0 else f"exit code {code}"


class ProcessPoolExecutor:
    """Local process pool. A worker is killed ``grace`` seconds after its run's timeout, counted from the start
    of ``solve`` (or from the assignment, while the untimed task build and ``prepare`` run); the worker's own
    alarm normally fires first. A worker that is not ready ``startup_timeout`` seconds after it was started is
    killed and replaced; ``max_idle_deaths`` workers dying before they run anything stop the pool.

    Each worker has its own pipes, read by a thread of this process: a worker killed at any moment (even half-way
    through sending its record) costs its own run only."""

    def __init__(self, jobs: int, grace: float = 30.0, max_idle_deaths: int = 3,
                 max_workers: int | None = None, startup_timeout: float = 600.0) -> None:
        self.jobs, self.grace, self.max_idle_deaths = max(1, jobs), grace, max_idle_deaths
        #: worker processes to start (default ``jobs``); ``jobs`` alone sets each worker's thread share
        self.max_workers = max_workers
        self.startup_timeout = startup_timeout
        self._idle_deaths = 0

    def run(self, specs: list[RunSpec], on_record: OnRecord, on_start: OnStart | None = None) -> None:
        """Run ``specs`` on the pool (``on_start`` is not used: the pool records its dead workers itself)."""
        ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
        events: queue.Queue[tuple[int, Any]] = queue.Queue()
        pending = list(reversed(specs))
        workers: dict[int, _Worker] = {}

        def spawn() -> None:
            w = _Worker(ctx, events, self.jobs)
            workers[w.pid] = w

        def give_work(w: _Worker) -> None:
            if w.ready and w.spec is None and pending:
                spec = pending.pop()
                if not w.assign(spec):
                    pending.append(spec)  # the worker is gone: its reader reports it, and the run goes elsewhere

        for _ in range(min(self.max_workers or self.jobs, len(specs))):
            spawn()
        try:
            while pending or any(w.spec is not None for w in workers.values()):
                try:
                    pid, message = events.get(timeout=0.2)
                except queue.Empty:
                    pid, message = None, None
                w = workers.get(pid) if pid is not None else None  # messages of retired workers are dropped
                if w is not None:
                    if isinstance(message, _Gone):
                        self._retire(w, workers, on_record, spawn, pending, message.why)
                    elif message == "ready":
                        w.ready, w.started = True, time.monotonic()
                    elif message == "solving" and w.spec is not None:
                        # the timeout covers solve; the untimed build and prepare (imports, warm-up) that came
                        # before it must not use up the backstop's budget
                        w.started = time.monotonic()
                    elif isinstance(message, dict):
                        w.spec = None
                        on_record(message)
                    if w.pid in workers:
                        give_work(w)
                self._reap(workers, on_record, spawn, pending)
        except BaseException:  # Ctrl-C, SIGTERM or an error: stop the workers now, mid-run or not
            for w in workers.values():
                w.kill()
            raise
        finally:
            for w in workers.values():
                if w.process.is_alive():
                    w.stop()
            for w in workers.values():
                w.process.join(timeout=5)
                w.kill()

    def _retire(self, w: _Worker, workers: dict[int, _Worker], on_record: OnRecord, spawn: Callable[[], None],
                pending: list[RunSpec], why: str = "") -> None:
        """Record the end of a worker that died, or left its pipe unreadable, and replace it if work remains."""
        w.kill()  # a live one (stuck starting up, or it sent an unreadable message) cannot be trusted further
        how = w.death() + (f"; {why}" if why else "")
        del workers[w.pid]
        if w.spec is not None:
            on_record(failed_record(w.spec, f"worker process died ({how}) during the run"))
            w.spec = None
        else:
            self._idle_deaths += 1
            if self._idle_deaths >= self.max_idle_deaths:
                raise RuntimeError(f"otbench worker processes keep dying before running anything ({how})")
        if pending:
            spawn()

    def _reap(self, workers: dict[int, _Worker], on_record: OnRecord, spawn: Callable[[], None],
              pending: list[RunSpec]) -> None:
        """Kill and replace workers past their run's timeout (plus grace) or stuck starting up. A worker found
        dead is normally retired when its reader reports the end of its pipe (after any record it sent); this
        retires it if that has not come within 5 s (a process it started may be holding the pipe open)."""
        now = time.monotonic()
        for pid, w in list(workers.items()):
            if w.spec is not None and now - w.started > w.spec.timeout + self.grace:
                w.kill()
                on_record(failed_record(w.spec, f"timeout: run exceeded its timeout of {w.spec.timeout:g} s "
                                                f"(worker killed after {now - w.started:.1f} s)"))
                w.spec = None
                del workers[pid]
                if pending:
                    spawn()
            elif w.spec is None and not w.ready and now - w.started > self.startup_timeout:
                self._retire(w, workers, on_record, spawn, pending,
                             f"not ready {self.startup_timeout:g} s after it was started")
            elif not w.process.is_alive():
                if w.dead_since is None:
                    w.dead_since = now
                elif now - w.dead_since > 5.0:
                    self._retire(w, workers, on_record, spawn, pending)


# -- choosing an executor from the machine -------------------------------------------------------------------

EXECUTORS = ("auto", "inprocess", "process", "ray")


def run_width(spec: RunSpec, registry: Any, cores: int | None = None) -> int:
    """How many threads a run wants (at most ``cores``): the suite's ``threads`` if an integer, else the solver's
    declared ``threads``, else every core (a solver without a preference gets the whole machine, as in-process)."""
    cores = cores or cpu_count()
    if isinstance(spec.threads, int):
        return max(1, min(spec.threads, cores))
    preference = registry.solver(spec.solver).cls.threads
    return max(1, min(preference, cores)) if preference is not None else cores


def parse_jobs(value: str | int | None) -> int | None:
    """``--jobs``: ``auto`` (or None) -> None, else a positive integer (``ValueError`` otherwise)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        jobs = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--jobs must be 'auto' or a positive integer, got {value!r}") from None
    if jobs < 1:
        raise ValueError(f"--jobs must be 'auto' or a positive integer, got {jobs}")
    return jobs


class GroupedExecutor:
    """Runs groups of runs one group after another, each with its own executor (``[(executor, specs), ...]``)."""

    def __init__(self, groups: list[tuple[Any, list[RunSpec]]]) -> None:
        self.groups = groups

    def run(self, specs: list[RunSpec], on_record: OnRecord, on_start: OnStart | None = None) -> None:
        """Run the planned groups; ``specs`` must be the runs they were planned for (any order)."""
        planned = sorted(s.key for _, group in self.groups for s in group)
        if sorted(s.key for s in specs) != planned:
            raise ValueError("GroupedExecutor.run got other runs than the ones it was planned for")
        for executor, group in self.groups:
            executor.run(group, on_record, on_start)


def _gpu_cap(group: list[RunSpec], registry: Any) -> int:
    """How many CUDA runs of ``group`` may share the (first) GPU at once: ``1 / gpu_share`` of its greediest
    solver (every local worker uses ``cuda:0``; spreading runs over several GPUs is what the Ray executor does).
    Unlimited for CPU runs."""
    shares = [float(getattr(registry.solver(s.solver).cls, "gpu_share", 1.0)) for s in group if s.device == "cuda"]
    if not shares:
        return 1 << 30
    return max(1, math.floor(1.0 / max(shares) + 1e-9))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def choose_executor(specs: list[RunSpec], registry: Any, executor: str = "auto", jobs: int | None = None,
                    address: str | None = None, gpu_share: float | None = None) -> tuple[Any, str]:
    """The executor for ``specs`` and a one-line description of the choice (for the run's header line).

    ``executor``: ``auto`` (Ray if ``address`` is given, else as ``jobs`` says), ``inprocess``, ``process`` or
    ``ray``. ``jobs``: None (``--jobs auto``) groups the runs by the threads they want (``run_width``) and
    gives each group ``cores // width`` workers: one worker per core for single-thread solvers, fewer and wider
    workers for solvers that want threads; CUDA runs also share the one GPU the local workers use, at most
    ``1 / gpu_share`` at once; a group with one worker (or one run) runs in-process under ``auto``.
    An integer keeps today's meaning: 1 = in-process, N > 1 = a pool of N workers sharing the cores. With Ray,
    an integer ``jobs`` caps the tasks in flight. Raises ``ValueError`` for contradictory choices and
    ``ImportError`` (with the install command) when Ray is asked for but not installed.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be one of {list(EXECUTORS)}, got {executor!r}")
    if address is not None and executor not in ("auto", "ray"):
        raise ValueError(f"--address connects to a Ray cluster: use it with --executor ray, not {executor!r}")
    if gpu_share is not None and executor not in ("auto", "ray") and address is None:
        raise ValueError("--gpu-share sets the GPUs Ray requests per run: use it with --executor ray")
    if executor == "ray" or (executor == "auto" and (address is not None or gpu_share is not None)):
        from otbench.executors_ray import RayExecutor

        ray_executor = RayExecutor(address=address, registry=registry, gpu_share=gpu_share, max_in_flight=jobs)
        cluster = address or os.environ.get("RAY_ADDRESS")  # Ray connects to $RAY_ADDRESS when it is set
        where = f"cluster at {cluster}" if cluster else "local instance"
        cap = f", at most {jobs} at once" if jobs else ""
        share = f", {gpu_share:g} GPU per CUDA run" if gpu_share is not None else ""
        return ray_executor, f"ray ({where}; one task per run, CPUs = its threads{share}{cap})"
    cores = cpu_count()
    if executor == "inprocess":
        if jobs not in (None, 1):
            raise ValueError(f"--executor inprocess runs one run at a time: drop --jobs {jobs} or use "
                             "--executor process")
        return InProcessExecutor(registry), "in-process"
    if jobs is not None:
        if jobs == 1 and executor == "auto":
            return InProcessExecutor(registry), "in-process (--jobs 1)"
        return ProcessPoolExecutor(jobs), f"process pool, {_plural(jobs, 'worker')} sharing {_plural(cores, 'core')}"
    by_width: dict[int, list[RunSpec]] = {}
    for spec in specs:
        by_width.setdefault(run_width(spec, registry, cores), []).append(spec)
    groups: list[tuple[Any, list[RunSpec]]] = []
    parts = []
    for width in sorted(by_width):
        group = by_width[width]
        per_core = max(1, cores // width)
        workers = min(per_core, len(group), _gpu_cap(group, registry))
        if workers == 1 and executor == "auto":
            groups.append((InProcessExecutor(registry), group))
            parts.append(f"in-process, {_plural(width, 'thread')} ({_plural(len(group), 'run')})")
        else:
            # the pool's size sets each worker's thread share (cores // jobs): keep it at the per-core count,
            # and start no more workers than the group (and the GPU) can use
            groups.append((ProcessPoolExecutor(per_core, max_workers=workers), group))
            parts.append(f"process pool, {_plural(workers, 'worker')} x {_plural(width, 'thread')} "
                         f"({_plural(len(group), 'run')})")
    if len(groups) == 1:
        return groups[0][0], f"{parts[0]} on {_plural(cores, 'core')} (--jobs auto)"
    return GroupedExecutor(groups), f"{' then '.join(parts)} on {_plural(cores, 'core')} (--jobs auto)"
