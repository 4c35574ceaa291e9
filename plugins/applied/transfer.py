"""(being written) applied transfer plugin module."""
