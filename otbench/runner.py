"""Executing one run: build the task, solve, time, measure memory, apply the metrics, make a record.

Nothing a run does can escape as an exception: a crash, NaN, timeout or out-of-memory becomes a record with
``status = "failed"``, the error and its traceback. Only ``KeyboardInterrupt`` propagates, so that Ctrl-C
stops the suite (every record finished before it is already on disk).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import torch

from otbench.api import Metric, Solution, UnsupportedProblem, published_problems
from otbench.env import DTYPES, PeakMemory, choose_threads, environment, resolve_device, seed_everything, synchronize
from otbench.registry import Registry
from otbench.suite import RunSpec


class RunTimeout(Exception):
    """The solver ran past the run's timeout."""


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise ``RunTimeout`` in the main thread after ``seconds`` (no-op off the main thread or off Unix).

    It interrupts Python code between bytecodes; a single long native call is interrupted when it returns.
    The process-pool executor enforces timeouts by killing the worker instead, which always works.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise RunTimeout(f"run exceeded its timeout of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _spec_fields(spec: RunSpec) -> dict[str, Any]:
    fields = dataclasses.asdict(spec)
    # ``metrics`` in a record is always the mapping of measured values; the names the suite asked for are
    # kept apart, so that a failed or skipped run never carries a list where readers expect a mapping
    fields["requested_metrics"] = list(fields.pop("metrics")) if spec.metrics is not None else None
    return fields


def base_record(spec: RunSpec, attempt: str | None = None) -> dict[str, Any]:
    """The spec fields of a run, an empty ``metrics`` mapping, its attempt id and start time."""
    return {**_spec_fields(spec), "metrics": {}, "status": "pending", "attempt": attempt or uuid.uuid4().hex,
            "started": datetime.now(timezone.utc).isoformat()}


def failed_record(spec: RunSpec, error: str, tb: str = "", attempt: str | None = None, **extra: Any) -> dict[str, Any]:
    """A failure record made outside the run (e.g. by an executor whose worker died or timed out)."""
    return {**base_record(spec, attempt), "status": "failed", "error": error, "traceback": tb, **extra}


#: words in the messages of allocation failures that are not ``MemoryError`` / ``torch.OutOfMemoryError``
_ALLOCATION_FAILURE = ("can't allocate memory", "cannot allocate memory", "out of memory", "not enough memory",
                       "failed to allocate", "bad_alloc", "std::bad_alloc")


def _is_allocation_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(word in text for word in _ALLOCATION_FAILURE)


def _finite_or_error(metrics: dict[str, float], solution: Solution) -> str | None:
    if solution.distance is not None and not math.isfinite(float(solution.distance)):
        return f"solver returned a non-finite distance ({solution.distance})"
    bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and math.isnan(v))
    if bad:
        return f"metrics returned NaN: {bad}"
    return None


def select_metrics(registry: Registry, names: tuple[str, ...] | None) -> list[Metric]:
    chosen = names if names is not None else tuple(sorted(registry.metrics))
    return [registry.metric(n).cls() for n in chosen]


def execute_run(spec: RunSpec, registry: Registry, jobs: int = 1, enforce_timeout: bool = True,
                attempt: str | None = None, on_timed_start: Any = None) -> dict[str, Any]:
    """Run one cell and return its record (never raises, except on KeyboardInterrupt).

    ``attempt`` is the id under which the executor marked the run as started (a fresh one when None);
    ``on_timed_start()`` is called when the timed part (``solve``) begins, after the untimed task build and
    ``prepare`` (a process pool restarts its timeout backstop there).
    """
    record = base_record(spec, attempt)
    task_entry, solver_entry = registry.task(spec.task), registry.solver(spec.solver)
    threads = choose_threads(spec.threads, solver_entry.cls.threads, jobs)
    torch.set_num_threads(threads)
    record["plugins"] = {"task": [task_entry.plugin, task_entry.version], "solver": [solver_entry.plugin, solver_entry.version]}
    record["primary_metric"] = list(task_entry.cls.primary_metric)
    task = None
    try:
        device = resolve_device(spec.device)
        record["env"] = environment(device, threads)
        seed_everything(spec.seed)
        kind, kinds = task_entry.cls.kind, solver_entry.cls.kinds
        if kind not in kinds:  # declared capabilities decide it: skip without building the task
            record.update(status="skipped", reason=f"{spec.solver} solves {sorted(kinds)} problems, not {kind!r}")
            return _finish(record)
        t0 = time.perf_counter()
        task = task_entry.cls(**spec.task_params)
        record["primary_metric"] = list(task.primary_metric)  # an instance may choose it (e.g. by its extractor)
        problem, truth = task.build(spec.seed, device, DTYPES[spec.dtype])
        record["task_build_seconds"] = time.perf_counter() - t0
        solver = solver_entry.cls(**spec.solver_params)
        reason = solver.supports(problem)
        if reason is not None:
            record.update(status="skipped", reason=reason)
            return _finish(record)
        solver.prepare(problem)
        seed_everything(spec.seed)
        if on_timed_start is not None:
            on_timed_start()
        with PeakMemory(device) as mem, (alarm(spec.timeout) if enforce_timeout else contextlib.nullcontext()):
            synchronize(device)
            start = time.perf_counter()
            solution = solver.solve(problem)
            synchronize(device)
            record["seconds"] = time.perf_counter() - start
        record["peak_memory_mb"] = mem.peak_bytes / 2**20
        if not isinstance(solution, Solution):
            raise TypeError(f"{spec.solver}.solve returned {type(solution).__name__}, expected otbench.Solution")
        warnings = _contract_warnings(solver_entry.cls, problem.kind, solution)
        if warnings:
            record["warnings"] = warnings
        record["parts"] = sorted(solution.parts())
        record["iterations"] = solution.iterations
        record["trace"] = solution.trace
        record["info"] = dict(solution.info)
        metrics, skipped, errors = _apply_metrics(registry, spec, truth, solution, problem)
        record["metrics"] = metrics
        record["metrics_skipped"] = skipped
        problem_text = _finite_or_error(metrics, solution)
        if errors:
            record.update(status="failed", error="; ".join(errors))
        elif problem_text:
            record.update(status="failed", error=problem_text)
        else:
            record["status"] = "ok"
    except KeyboardInterrupt:
        raise
    except RunTimeout as exc:
        record.update(status="failed", error=f"timeout: {exc}", traceback=traceback.format_exc())
    except torch.cuda.OutOfMemoryError as exc:
        record.update(status="failed", error=f"out of memory: {exc}", traceback=traceback.format_exc())
    except UnsupportedProblem as exc:
        record.update(status="skipped", reason=str(exc))
    except MemoryError as exc:
        record.update(status="failed", error=f"out of memory: MemoryError {exc}", traceback=traceback.format_exc())
    except Exception as exc:
        prefix = "out of memory: " if _is_allocation_failure(exc) else ""
        record.update(status="failed", error=f"{prefix}{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    if task is not None and record["status"] != "skipped":
        _attach_published(record, task, spec)
    return _finish(record)


def _attach_published(record: dict[str, Any], task: Any, spec: RunSpec) -> None:
    """Store ``task.published(solver, params)`` (a reference row, never ranked) under ``record["published"]``.

    A task that cannot say never fails the run: an exception there becomes a warning in the record.
    """
    try:
        ref = task.published(spec.solver, dict(spec.solver_params))
    except Exception as exc:  # noqa: BLE001 - reference numbers are optional by design
        record.setdefault("warnings", []).append(f"task.published raised {type(exc).__name__}: {exc}")
        return
    if ref is None:
        return
    problems = published_problems(ref)
    if problems:  # a malformed reference is dropped, loudly: it must not reach the report half-valid
        record.setdefault("warnings", []).append("task.published ignored: " + "; ".join(problems))
        return
    record["published"] = ref


def _contract_warnings(solver_cls: type, kind: str, solution: Solution) -> list[str]:
    """Departures from the solver's declared contract that the runner tolerates but must not hide.

    A part the solver does not declare is still measured (so a metric may use it) but named here; a distance
    that is a tensor is converted to a float (a tensor can hold a device buffer or an autograd graph).
    """
    warnings = []
    extra = sorted(solution.parts() - solver_cls.parts_for(kind))
    if extra:
        warnings.append(f"solution holds parts {extra} that {solver_cls.name!r} does not declare in provides "
                        f"({sorted(solver_cls.parts_for(kind))}) for {kind!r} problems")
    if solution.distance is not None and not isinstance(solution.distance, (int, float)):
        kind_name = type(solution.distance).__name__
        try:
            solution.distance = float(solution.distance)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"Solution.distance must be a float, got {kind_name} that float() rejects: {exc}") from None
        warnings.append(f"Solution.distance was a {kind_name}, not a float; converted with float()")
    return warnings


def _apply_metrics(registry: Registry, spec: RunSpec, truth: Any, solution: Solution, problem: Any
                   ) -> tuple[dict[str, float], dict[str, str], list[str]]:
    values: dict[str, float] = {}
    owner: dict[str, str] = {}
    skipped: dict[str, str] = {}
    errors: list[str] = []
    for metric in select_metrics(registry, spec.metrics):
        reason = metric.applies(problem, truth, solution)
        if reason is not None:
            skipped[metric.name] = reason
            continue
        gen_state = torch.random.get_rng_state()
        try:
            torch.manual_seed(spec.seed + 7919)  # metrics that sample get a fixed stream of their own
            out = metric.compute(truth, solution, problem)
            clash = sorted(k for k in out if k in owner)
            if clash:  # never let one metric silently overwrite another's number
                raise ValueError(f"outputs {clash} are already produced by metric {owner[clash[0]]!r}")
            values.update({k: float(v) for k, v in out.items()})
            owner.update({k: metric.name for k in out})
        except Exception as exc:
            errors.append(f"metric {metric.name} raised {type(exc).__name__}: {exc}")
        finally:
            torch.random.set_rng_state(gen_state)
    return values, skipped, errors


def _finish(record: dict[str, Any]) -> dict[str, Any]:
    record["finished"] = datetime.now(timezone.utc).isoformat()
    return record
