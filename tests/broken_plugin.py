"""A plugin module that fails at import, to check that the other plugins still load."""

raise ImportError("broken_plugin cannot be imported (on purpose)")
