"""The run environment: devices, seeding, thread counts, clocks and the fingerprint stored with each record."""

from __future__ import annotations

import os
import platform
import random
import subprocess
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEVICE_POLICIES = ("auto", "cpu", "cuda")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(policy: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU. Asking for ``cuda`` without one is an error."""
    if policy == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if policy == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    if policy not in DEVICE_POLICIES:
        raise ValueError(f"device must be one of {DEVICE_POLICIES}, got {policy!r}")
    return torch.device(policy)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so that a clock read measures finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def choose_threads(requested: int | str | None, solver_preference: int | None, jobs: int) -> int:
    """Torch intra-op threads for one run: never more than cores // jobs, so workers do not oversubscribe.

    ``requested`` is the suite's ``threads`` (an int, or ``auto``); ``solver_preference`` is the solver's own
    hint (tiny MLPs run ~10x faster with 1 thread than with 2 on small machines).
    """
    share = max(1, cpu_count() // max(1, jobs))
    if isinstance(requested, int):
        return max(1, min(requested, share))
    if solver_preference is not None:
        return max(1, min(solver_preference, share))
    return share


class PeakMemory:
    """Peak memory during a block: CUDA peak allocated bytes, or peak process RSS above the start on CPU.

    RSS is sampled every few milliseconds by a background thread (allocations that live shorter than the
    sampling period can be missed); ``peak_bytes`` is the growth over the RSS at entry.
    """

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.peak_bytes: int = 0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = _rss_bytes()
        self._peak = self._base
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = max(0, torch.cuda.max_memory_allocated(self.device) - self._base)
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.peak_bytes = max(0, self._peak - self._base)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - non-Linux fallback: peak, not current
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def now() -> float:
    return time.perf_counter()


@lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The git commit of the otbench checkout (with ``-dirty`` if modified), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def environment(device: torch.device, threads: int) -> dict[str, Any]:
    """What a result record must carry to be traced to the software and machine that produced it."""
    import otbench

    return {
        "otbench_version": otbench.__version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": threads,
        "cpu_count": cpu_count(),
        "hostname": platform.node(),
    }
