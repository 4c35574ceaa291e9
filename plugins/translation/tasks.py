"""(being written) translation tasks plugin module."""
