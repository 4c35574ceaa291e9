"""otbench: a benchmark harness for optimal-transport solvers."""

from otbench.api import (
    InvalidInput,
    Metric,
    OTBenchError,
    Problem,
    Solution,
    Solver,
    SolverDidNotConverge,
    Task,
    Truth,
    UnsupportedProblem,
)
from otbench.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "hookimpl",
    "InvalidInput",
    "Metric",
    "OTBenchError",
    "Problem",
    "Solution",
    "Solver",
    "SolverDidNotConverge",
    "Task",
    "Truth",
    "UnsupportedProblem",
]
