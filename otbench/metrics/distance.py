"""Metrics on the returned distance value."""

from __future__ import annotations

from otbench.api import Metric, Problem, Solution, Truth


class DistanceError(Metric):
    """Relative and absolute error of the returned distance against the task's true OT cost."""

    name = "distance_error"
    needs = frozenset({"distance"})
    truth_needs = frozenset({"distance"})
    outputs = {"distance": "none", "true_distance": "none", "distance_rel_error": "min", "distance_abs_error": "min"}

    def compute(self, truth: Truth, solution: Solution, problem: Problem) -> dict[str, float]:
        est, true = float(solution.distance), float(truth.distance)
        abs_err = abs(est - true)
        return {
            "distance": est,
            "true_distance": true,
            "distance_abs_error": abs_err,
            "distance_rel_error": abs_err / abs(true) if true != 0 else float("inf") if abs_err else 0.0,
        }


METRICS = [DistanceError]
