"""The result store: one JSON line per finished run, appended atomically and fsynced.

A line is written with a single ``os.write`` on an ``O_APPEND`` descriptor, so a kill mid-suite never leaves a
half-written record that hides the others. The store is locked while a runner writes to it, so two runners
never interleave in one directory.

Reading never trusts the file: a line that is not JSON (a write torn by a power loss, garbage) or a record of
the wrong shape (``key`` not a string, ``metrics`` not a mapping...) is skipped, and ``ResultStore.problems``
says how many and on which lines, so that the caller can say so.

A run is *marked as started* (``running.jsonl``) before it runs in this process. If the process is killed
during the run (OOM killer, a segfault in a native library), the mark stays with no record after it; the next
runner turns it into a failed record ("the process died during this run") instead of dying on the same run
forever.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORDS_FILE = "records.jsonl"
RUNNING_FILE = "running.jsonl"
#: statuses of result records; "ok" and "skipped" are done, "failed" is retried only on request
RESULT_STATUSES = ("ok", "failed", "skipped")
DONE_STATUSES = ("ok", "skipped")
DIED_ERROR = ("the process died during this run (killed by a signal: the OOM killer, SIGKILL, or a crash in "
              "native code); it is not retried unless you pass --retry-failed or --force")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy / torch scalars
        try:
            return _jsonable(value.item())
        except (ValueError, RuntimeError):  # a tensor of many values: keep its text
            return str(value)
    return str(value)


class StoreLocked(RuntimeError):
    """Another otbench process is writing to the same results directory."""


class StoreError(OSError):
    """The results directory cannot be used (not writable, not a folder, disk full); the message says why."""


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (read-only)" if exc.errno != errno.EROFS else "read-only file system"
    return exc.strerror or str(exc)


def record_shape_problem(rec: Any) -> str | None:
    """``None`` if ``rec`` has the shape of a result record, else what is wrong with it."""
    if not isinstance(rec, dict):
        return f"a record must be a JSON object, got {type(rec).__name__}"
    if not isinstance(rec.get("key"), str) or not rec["key"]:
        return f"'key' must be a non-empty string, got {rec.get('key')!r}"
    if rec.get("status") not in RESULT_STATUSES:
        return f"'status' must be one of {list(RESULT_STATUSES)}, got {rec.get('status')!r}"
    metrics = rec.get("metrics")
    if metrics is not None and not isinstance(metrics, dict):
        if isinstance(metrics, list) and all(isinstance(m, str) for m in metrics):
            return None  # records of otbench <= 0.1.0 kept the requested metric names here (normalised on read)
        return f"'metrics' must be a mapping of names to numbers, got {type(metrics).__name__}"
    for name, value in (metrics or {}).items():
        if value is not None and not isinstance(value, (int, float, str)) or isinstance(value, bool):
            return f"metric {name!r} must be a number, got {type(value).__name__}"
    for name in ("task_params", "solver_params"):
        if rec.get(name) is not None and not isinstance(rec[name], dict):
            return f"{name!r} must be a mapping, got {type(rec[name]).__name__}"
    for name in ("task_label", "solver_label", "task", "solver"):
        if rec.get(name) is not None and not isinstance(rec[name], str):
            return f"{name!r} must be a string, got {type(rec[name]).__name__}"
    if rec.get("seed") is not None and (not isinstance(rec["seed"], int) or isinstance(rec["seed"], bool)):
        return f"'seed' must be an integer, got {rec['seed']!r}"
    return None


def _normalise(rec: dict[str, Any]) -> dict[str, Any]:
    """Read old records like new ones: requested metric names once lived under ``metrics``."""
    if isinstance(rec.get("metrics"), list):
        rec = {**rec, "requested_metrics": rec["metrics"], "metrics": {}}
    return rec


@dataclass
class ReadProblems:
    """Lines of ``records.jsonl`` that were skipped, by kind, with their 1-based line numbers."""

    unreadable: list[int] = field(default_factory=list)
    wrong_shape: list[tuple[int, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.unreadable or self.wrong_shape)

    def describe(self, path: Path) -> str:
        parts = []
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} line(s) that are not JSON records (torn or garbage) at "
                         f"line(s) {_lines(self.unreadable)}")
        if self.wrong_shape:
            first_line, why = self.wrong_shape[0]
            parts.append(f"{len(self.wrong_shape)} record(s) of the wrong shape at line(s) "
                         f"{_lines([n for n, _ in self.wrong_shape])} (line {first_line}: {why})")
        return f"{path}: skipped " + " and ".join(parts)


def _lines(numbers: list[int], most: int = 10) -> str:
    shown = ", ".join(str(n) for n in numbers[:most])
    return shown + (f" and {len(numbers) - most} more" if len(numbers) > most else "")


class ResultStore:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / RECORDS_FILE
        self.running_path = self.directory / RUNNING_FILE
        self._lock_fd: int | None = None
        #: what the last ``records()`` pass skipped
        self.problems = ReadProblems()

    def __enter__(self) -> "ResultStore":
        self.check_writable()
        try:
            fd = os.open(self.directory / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot write to the results directory {self.directory}: {_why(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(f"{self.directory} is in use by another otbench run; use another --results-dir") from None
        self._lock_fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def check_writable(self) -> None:
        """Make the directory and prove that records can be appended, before any run is computed.

        Raises ``StoreError`` naming the path and the reason (a parent that is a file, a read-only folder or
        file, ``records.jsonl`` that is a folder).
        """
        for parent in [self.directory, *self.directory.parents]:
            if parent.exists() and not parent.is_dir():
                raise StoreError(f"cannot use {self.directory} as a results directory: {parent} is a file, "
                                 "not a folder")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the results directory {self.directory}: {_why(exc)}") from None
        for path in (self.path, self.running_path):
            if path.exists() and not path.is_file():
                raise StoreError(f"{path} is not a regular file; move it away or use another --results-dir")
            if path == self.running_path and not path.exists():
                continue  # made by the first start mark; records.jsonl proves the folder is writable
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
            except OSError as exc:
                raise StoreError(f"cannot write to {path}: {_why(exc)}") from None

    def _append_line(self, path: Path, record: dict[str, Any]) -> None:
        line = (json.dumps(_jsonable(record), sort_keys=True, allow_nan=False) + "\n").encode()
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot write to {path}: {_why(exc)}") from None
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # close a line torn by an earlier kill so this record stays readable
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, f"short write: {written} of {len(line)} bytes")
            os.fsync(fd)
        except OSError as exc:
            raise StoreError(f"cannot write to {path}: {_why(exc)}") from None
        finally:
            os.close(fd)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably (one write call, then fsync). Raises ``StoreError`` when it cannot."""
        self._append_line(self.path, record)

    # -- started-run marks -------------------------------------------------------------------------------

    def mark_started(self, record: dict[str, Any]) -> None:
        """Note that the run of ``record`` (its spec fields and ``attempt`` id) is about to start here."""
        self._append_line(self.running_path, {**record, "status": "started", "pid": os.getpid()})

    def clear_started(self) -> None:
        """Forget every start mark (after a session whose runs all ended, or were interrupted cleanly)."""
        if self.running_path.is_file() and self.running_path.stat().st_size:
            try:
                with self.running_path.open("r+b") as fh:
                    fh.truncate(0)
            except OSError:  # pragma: no cover - only when the folder turned read-only mid-session
                pass

    def died_runs(self) -> list[dict[str, Any]]:
        """Start marks with no record of the same attempt: their process died during the run."""
        if not self.running_path.is_file():
            return []
        finished = {rec.get("attempt") for rec in self.records()}
        died = []
        with self.running_path.open("rb") as fh:
            for raw in fh:
                try:
                    mark = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(mark, dict) and isinstance(mark.get("key"), str) and mark.get("attempt") not in finished:
                    died.append(mark)
        return died

    def recover_died_runs(self) -> list[dict[str, Any]]:
        """Turn each run whose process died into a failed record (so that it no longer blocks the suite)."""
        records = []
        for mark in self.died_runs():
            rec = {k: v for k, v in mark.items() if k not in ("status", "pid")}
            rec.update(status="failed", error=DIED_ERROR, traceback="", metrics={},
                       died_pid=mark.get("pid"))
            self.append(rec)
            records.append(rec)
        self.clear_started()
        return records

    # -- reading ----------------------------------------------------------------------------------------

    def records(self) -> Iterator[dict[str, Any]]:
        """Every readable result record in write order; other lines are skipped and counted in ``problems``."""
        self.problems = ReadProblems()
        if not self.path.is_file():
            return
        with self.path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except ValueError:
                    self.problems.unreadable.append(number)
                    continue
                why = record_shape_problem(rec)
                if why is not None:
                    self.problems.wrong_shape.append((number, why))
                    continue
                yield _normalise(rec)

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of each run key."""
        return {rec["key"]: rec for rec in self.records()}

    def done_keys(self) -> set[str]:
        """Keys whose latest record is a success or a stated skip."""
        return {k for k, rec in self.latest().items() if rec.get("status") in DONE_STATUSES}
