"""The core metrics, registered as a plugin like any other (``otbench_register_metrics``).

Each submodule lists its metric classes in ``METRICS``; add a module to ``_MODULES`` to register it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from otbench.hookspecs import hookimpl

_MODULES = (
    "otbench.metrics.distance",
    "otbench.metrics.maps",
    "otbench.metrics.lp",
    "otbench.metrics.w1",
    "otbench.metrics.generative",
    "otbench.metrics.classification",
    "otbench.metrics.barycenter",
)


def core_metrics() -> list[type]:
    return [cls for mod in _MODULES for cls in importlib.import_module(mod).METRICS]


@hookimpl
def otbench_register_metrics(register: Callable[[type], None]) -> None:
    for cls in core_metrics():
        register(cls)
