"""(being written) applied adaptation plugin module."""
