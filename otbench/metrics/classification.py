"""(being written) Core classification metrics."""

from __future__ import annotations

METRICS: list[type] = []
