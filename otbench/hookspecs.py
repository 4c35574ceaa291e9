"""Every hook an otbench plugin can implement. One module, one place to read the plugin contract.

A plugin is any module registered under the ``otbench`` entry-point group (built-ins included) that
implements some of these hooks with ``@otbench.hookimpl``. Each hook receives a ``register`` callback;
call it once per class you provide::

    from otbench import hookimpl

    @hookimpl
    def otbench_register_solvers(register):
        register(MySolver)
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("otbench")
hookimpl = pluggy.HookimplMarker("otbench")


@hookspec
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    """Register Solver subclasses: call ``register(SolverClass)`` for each. Names must be unique."""


@hookspec
def otbench_register_tasks(register: Callable[[type], None]) -> None:
    """Register Task subclasses: call ``register(TaskClass)`` for each. Names must be unique."""


@hookspec
def otbench_register_metrics(register: Callable[[type], None]) -> None:
    """Register Metric subclasses beyond the core ones: call ``register(MetricClass)`` for each."""
