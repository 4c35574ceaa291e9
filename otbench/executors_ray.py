"""Run a suite on Ray: one remote task per run, on a local Ray instance or an existing cluster.

Ray is an optional extra (``pip install -e '.[ray]'``) and is imported only when this executor runs.

Resources: a run asks for ``num_cpus`` = its thread count (the suite's ``threads`` if an integer, else the
solver's declared ``threads``, else every core of the largest node: a solver with no preference gets a whole
machine, as in-process) and, on CUDA, ``num_gpus`` = the solver's ``gpu_share`` (fractional: several small
critics share a GPU), unless the executor is given a ``gpu_share`` that overrides it for every run. The worker
sets exactly that many torch threads.

Faults: tasks are never retried by Ray (``max_retries=0``). A task whose worker or node dies, that Ray's
memory monitor kills, or that raises becomes a failed record. Timeouts are enforced twice: in the worker (the
runner's alarm gives an exact record) and by the driver, which force-cancels (kills) a task ``grace`` seconds
after its timeout, counted from the start of ``solve`` (or from the start of the task while the untimed build
and ``prepare`` run); so a hung native call still ends as a failed record. Ctrl-C cancels every outstanding
task; the records already handed to ``on_record`` are kept. The driver is the only writer of records.

Workers load the same plugins as the driver (``OTBENCH_PLUGIN_MODULES`` included): on a local instance that
this executor starts they inherit its environment; on a cluster, or a Ray instance already initialised in this
process, the driver's ``OTBENCH_*`` variables and ``PYTHONPATH`` go with every task in its ``runtime_env``
(plugin packages must then be installed on every node).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Callable

from otbench.registry import get_registry
from otbench.suite import RunSpec

# otbench.env and otbench.runner import torch: they are imported where used, so that the small tracker actor
# (defined in this module) starts without torch

INSTALL_HINT = "Ray is not installed: install the extra with `pip install -e '.[ray]'` (or `pip install 'ray>=2.9'`)"
#: driver variables forwarded to every worker (plugins, dataset locations)
FORWARDED_PREFIX = "OTBENCH_"


class RayUnavailable(RuntimeError):
    """Ray could not be started or the cluster could not be reached (no run was submitted)."""


def import_ray() -> Any:
    """Import Ray, or raise ``ImportError`` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the address, when nothing listens at ``host:port`` / ``ray://host:port`` (Ray itself
    retries an unreachable head for minutes before it gives up). ``auto`` and other forms are left to Ray."""
    import socket

    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port} ({exc.strerror or exc}); is the Ray head running "
                              f"there (`ray start --head`; a ray:// address needs the client server, port 10001)?"
                              ) from exc


def cluster_device(policy: str, address: str | None) -> str | None:
    """The device type for a suite sent to the Ray cluster at ``address`` (or ``$RAY_ADDRESS``) from a driver
    without CUDA: ``auto`` -> ``cuda`` when the cluster has GPUs, else ``cpu``; ``cuda`` -> ``cuda`` when it has
    GPUs (``RayUnavailable`` otherwise). ``None`` when there is no cluster address or the policy is ``cpu``:
    decide on this machine as usual. Connects to the cluster and stays connected (the executor reuses it)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None or policy not in ("auto", "cuda"):
        return None
    executor = RayExecutor(address=address)
    executor._connect()
    gpus = float(executor.ray.cluster_resources().get("GPU", 0))
    if gpus > 0:
        return "cuda"
    if policy == "cuda":
        raise RayUnavailable(f"device 'cuda' requested but the Ray cluster at {address} has no GPU")
    return "cpu"


def worker_env() -> dict[str, str]:
    """The environment variables a Ray worker needs to load the same plugins as the driver."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIX)}
    if os.environ.get("PYTHONPATH"):  # prepended to the node's own PYTHONPATH (Ray expands ${PYTHONPATH})
        env["PYTHONPATH"] = os.environ["PYTHONPATH"] + os.pathsep + "${PYTHONPATH}"
    return env


def run_threads(spec: RunSpec, solver_threads: int | None, max_cpus: int) -> int:
    """The CPU threads (and so Ray CPUs) a run asks for, at most ``max_cpus`` (the largest node's CPUs)."""
    if isinstance(spec.threads, int):
        wanted = spec.threads
    elif solver_threads is not None:
        wanted = solver_threads
    else:
        wanted = max_cpus
    return max(1, min(int(wanted), max_cpus))


def run_gpus(spec: RunSpec, solver_gpu_share: float, override: float | None = None) -> float:
    """The GPUs a run asks for: 0 off CUDA, else the override or the solver's declared ``gpu_share``."""
    if spec.device != "cuda":
        return 0.0
    return float(override if override is not None else solver_gpu_share)


def _strip_cwd_from_path() -> None:
    """Ray puts the driver's working directory on a worker's ``sys.path``: never import from it (a
    ``socket.py`` lying there must not run), as the process pool's workers do not."""
    cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".", cwd)]


def _execute_remote(spec: RunSpec, threads: int, attempt: str, tracker: Any) -> dict[str, Any]:
    """Body of the Ray task: run one spec with ``threads`` torch threads and return its record."""
    import ray

    from otbench.runner import execute_run

    _strip_cwd_from_path()
    tracker.mark.remote(attempt, "started")
    registry = get_registry()
    # the worker runs with exactly the CPUs it was granted; the record keeps the suite's own `threads` value
    record = execute_run(replace(spec, threads=threads), registry, jobs=1, attempt=attempt,
                         on_timed_start=lambda: tracker.mark.remote(attempt, "solving"))
    record["threads"] = spec.threads
    ctx = ray.get_runtime_context()
    record["ray"] = {"node_id": ctx.get_node_id(), "resources": dict(ctx.get_assigned_resources())}
    return record


class _Tracker:
    """A tiny actor where tasks note when they start and when ``solve`` starts (for the driver's deadlines)."""

    def __init__(self) -> None:
        self.phases: dict[str, str] = {}

    def mark(self, attempt: str, phase: str) -> None:
        self.phases[attempt] = phase

    def snapshot(self) -> dict[str, str]:
        return dict(self.phases)

    def forget(self, attempts: list[str]) -> None:
        for a in attempts:
            self.phases.pop(a, None)


@dataclass
class _Flight:  # noqa: D101 - a submitted run as the driver sees it
    spec: RunSpec
    attempt: str
    phase: str = "queued"  # queued -> started -> solving
    since: float = 0.0  # driver clock when the current phase was first seen


def describe_failure(exc: BaseException) -> str:
    """A failed record's error for a Ray exception raised when fetching a task's result."""
    import ray.exceptions as rex

    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, getattr(rex, "OutOfMemoryError", ())):
        return f"out of memory: Ray's memory monitor killed the worker ({name}: {text})"
    if isinstance(exc, rex.NodeDiedError):
        return f"the Ray node running this run died ({name}: {text})"
    if isinstance(exc, rex.WorkerCrashedError):
        return f"worker process died during the run (killed, out of memory or a native crash; {name})"
    if isinstance(exc, rex.TaskCancelledError):
        return f"the Ray task was cancelled ({name})"
    if isinstance(exc, rex.RayTaskError):
        cause = exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc
        return f"the Ray task raised {type(getattr(exc, 'cause', None) or cause).__name__}: {text}"
    return f"{name}: {text}"


class RayExecutor:
    """One Ray task per run. ``address``: an existing cluster (``ray://host:10001``, ``auto``, ``host:6379``);
    ``None`` starts a local instance (dashboard off, temp files in ``temp_dir`` or a fresh temporary folder,
    both removed at the end) unless Ray is already initialised in this process (then it is used and left
    running). ``gpu_share`` overrides every solver's declared share; ``max_in_flight`` caps the tasks submitted
    at once (default: all)."""

    def __init__(self, address: str | None = None, registry: Any = None, gpu_share: float | None = None,
                 grace: float = 30.0, temp_dir: str | None = None, num_cpus: int | None = None,
                 num_gpus: float | None = None, max_in_flight: int | None = None, poll: float = 0.25) -> None:
        if gpu_share is not None and not 0 < gpu_share:
            raise ValueError(f"gpu_share must be > 0 (a fraction of one GPU, or a GPU count), got {gpu_share}")
        self.address, self.registry, self.gpu_share, self.grace = address, registry, gpu_share, grace
        self.temp_dir, self.num_cpus, self.num_gpus = temp_dir, num_cpus, num_gpus
        self.max_in_flight, self.poll = max_in_flight, poll
        self._snapshot: Any = None  # the tracker snapshot request in flight
        self.ray = import_ray()  # fail early, with the install hint, before any run starts

    # -- connection ---------------------------------------------------------------------------------
    def _connect(self) -> tuple[bool, bool, str | None]:
        """Initialise Ray if needed; returns (whether we called ``ray.init``, whether the workers are children of
        a local instance we started and so inherit our environment, a temp folder of ours to remove)."""
        ray = self.ray
        if ray.is_initialized():
            return False, False, None
        # Ray's core worker installs a native SIGTERM handler that aborts the driver: keep the caller's (the
        # CLI stops a suite on SIGTERM exactly as on Ctrl-C, keeping every finished record)
        main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if main else None
        try:
            return self._init(ray)
        except Exception as exc:  # noqa: BLE001 - a bad address, a version mismatch, no room for a local instance
            where = f"connect to the Ray cluster at {self.address or os.environ.get('RAY_ADDRESS')}" \
                if self.address or os.environ.get("RAY_ADDRESS") else "start a local Ray instance"
            raise RayUnavailable(f"could not {where}: {type(exc).__name__}: {exc}") from exc
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _init(self, ray: Any) -> tuple[bool, bool, str | None]:
        common = {"include_dashboard": False, "logging_level": logging.WARNING}
        address = self.address or os.environ.get("RAY_ADDRESS") or None  # Ray's own convention for a cluster
        if address is not None:
            _check_reachable(address)
            ray.init(address=address, logging_level=logging.WARNING)
            return True, False, None
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance: no token in ~/.ray
        ours = None
        temp_dir = self.temp_dir
        if temp_dir is None:  # short: Ray's unix sockets live below it (paths are limited to ~107 bytes)
            temp_dir = ours = tempfile.mkdtemp(prefix="otbench-ray-")
        from otbench.env import cpu_count

        ray.init(num_cpus=self.num_cpus if self.num_cpus is not None else cpu_count(), num_gpus=self.num_gpus,
                 _temp_dir=str(temp_dir), **common)
        return True, True, ours

    def _largest_node_cpus(self) -> int:
        cpus = [n.get("Resources", {}).get("CPU", 0) for n in self.ray.nodes() if n.get("Alive")]
        return max(1, int(max(cpus, default=1)))

    # -- running ------------------------------------------------------------------------------------
    def run(self, specs: list[RunSpec], on_record: Callable[[dict[str, Any]], None], on_start: Any = None) -> None:
        """Run ``specs``; ``on_record`` gets each record as it arrives (``on_start`` is not used: the driver
        itself records runs whose worker died)."""
        if not specs:
            return
        from otbench.runner import failed_record

        ray = self.ray
        started_ray, inherits_env, ours = self._connect()
        tracker = None
        self._snapshot = None
        inflight: dict[Any, _Flight] = {}
        try:
            registry = self.registry or get_registry()
            max_cpus = self._largest_node_cpus()
            total_gpus = float(ray.cluster_resources().get("GPU", 0))
            task = ray.remote(_execute_remote)
            tracker = ray.remote(num_cpus=0)(_Tracker).remote()
            options = {} if inherits_env else {"runtime_env": {"env_vars": worker_env()}}
            pending = list(reversed(specs))
            limit = self.max_in_flight or len(specs)

            def submit(spec: RunSpec) -> None:
                cls = registry.solver(spec.solver).cls
                threads = run_threads(spec, cls.threads, max_cpus)
                gpus = run_gpus(spec, getattr(cls, "gpu_share", 1.0), self.gpu_share)
                if gpus > total_gpus:  # Ray would wait for it forever
                    on_record(failed_record(spec, f"the run asks for {gpus:g} GPU(s) but the Ray cluster has "
                                                  f"{total_gpus:g}; lower gpu_share or add GPU nodes"))
                    return
                attempt = uuid.uuid4().hex
                name = f"otbench:{spec.task_label}/{spec.solver_label}/{spec.seed}"  # as Ray's tools show it
                ref = task.options(num_cpus=threads, num_gpus=gpus, max_retries=0, retry_exceptions=False, name=name,
                                   **options).remote(spec, threads, attempt, tracker)
                inflight[ref] = _Flight(spec, attempt)

            while pending or inflight:
                while pending and len(inflight) < limit:
                    submit(pending.pop())
                if not inflight:
                    continue
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=self.poll)
                if ready:
                    ready, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0)
                done: list[str] = []
                for ref in ready:
                    flight = inflight.pop(ref)
                    done.append(flight.attempt)
                    try:
                        record = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - every Ray failure becomes a failed record
                        record = failed_record(flight.spec, describe_failure(exc), tb=str(exc),
                                               attempt=flight.attempt)
                    on_record(record)
                if done:
                    tracker.forget.remote(done)  # keep the tracker's table (and its snapshots) small
                self._enforce_deadlines(inflight, tracker, on_record)
        except BaseException:  # Ctrl-C, SIGTERM or an error: cancel what is outstanding, keep what finished
            for ref in list(inflight):
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort while stopping
                    pass
            raise
        finally:
            if tracker is not None:
                try:
                    ray.kill(tracker)
                except Exception:  # noqa: BLE001
                    pass
            if started_ray:
                ray.shutdown()
            if ours is not None:
                shutil.rmtree(ours, ignore_errors=True)

    def _enforce_deadlines(self, inflight: dict[Any, _Flight], tracker: Any,
                           on_record: Callable[[dict[str, Any]], None]) -> None:
        """Note the phases tasks reached, and kill those past ``timeout + grace`` in their current phase."""
        from otbench.runner import failed_record

        ray = self.ray
        # one snapshot request is outstanding at a time, read when it is ready: the loop never blocks on the
        # tracker (it may still be starting, or be gone: then the last known phases stay)
        phases: dict[str, str] = {}
        if self._snapshot is None:
            self._snapshot = tracker.snapshot.remote()
        if ray.wait([self._snapshot], timeout=0)[0]:
            try:
                phases = ray.get(self._snapshot)
            except Exception:  # noqa: BLE001 - the tracker died: no more phase news
                pass
            self._snapshot = tracker.snapshot.remote()
        now = time.monotonic()
        for ref, flight in list(inflight.items()):
            phase = phases.get(flight.attempt, flight.phase)
            if phase != flight.phase and not (flight.phase == "solving" and phase == "started"):
                flight.phase, flight.since = phase, now
            if flight.phase == "queued":
                continue  # waiting for resources: not running yet
            elapsed = now - flight.since
            if elapsed > flight.spec.timeout + self.grace:
                ray.cancel(ref, force=True)
                del inflight[ref]
                tracker.forget.remote([flight.attempt])
                where = "in solve" if flight.phase == "solving" else "before solve (task build or prepare)"
                on_record(failed_record(flight.spec, f"timeout: run exceeded its timeout of {flight.spec.timeout:g} s "
                                                     f"(Ray task killed after {elapsed:.1f} s {where})",
                                        attempt=flight.attempt))
