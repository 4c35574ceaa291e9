"""(being written) Core generative metrics."""

from __future__ import annotations

METRICS: list[type] = []
