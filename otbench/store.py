"""The result store: one JSON line per finished run, appended atomically and fsynced.

A line is written with a single ``os.write`` on an ``O_APPEND`` descriptor, so a kill mid-suite never leaves a
half-written record that hides the others; a damaged trailing line (power loss) is skipped on read. The
store is locked while a runner writes to it, so two runners never interleave in one directory.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RECORDS_FILE = "records.jsonl"
DONE_STATUSES = ("ok", "skipped")


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
        return _jsonable(value.item())
    return str(value)


class StoreLocked(RuntimeError):
    """Another otbench process is writing to the same results directory."""


class ResultStore:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / RECORDS_FILE
        self._lock_fd: int | None = None

    def __enter__(self) -> "ResultStore":
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
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

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably (one write call, then fsync)."""
        line = (json.dumps(_jsonable(record), sort_keys=True, allow_nan=False) + "\n").encode()
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # close a line torn by an earlier kill so this record stays readable
            written = os.write(fd, line)
            if written != len(line):  # pragma: no cover - only on a full disk
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every readable record in write order; undecodable lines (a torn final write) are skipped."""
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            for raw in fh:
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "key" in rec:
                    yield rec

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of each run key."""
        return {rec["key"]: rec for rec in self.records()}

    def done_keys(self) -> set[str]:
        """Keys whose latest record is a success or a stated skip. Failures are never treated as done."""
        return {k for k, rec in self.latest().items() if rec.get("status") in DONE_STATUSES}
