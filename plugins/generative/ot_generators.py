"""(being written) generative ot_generators plugin module."""
