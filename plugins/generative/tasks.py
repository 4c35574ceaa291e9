"""(being written) generative tasks plugin module."""
