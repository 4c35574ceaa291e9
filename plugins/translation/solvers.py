"""(being written) translation solvers plugin module."""
