"""otbench's built-in plugins (import name ``otbench_plugins``), each registered through the ``otbench``
entry-point group in pyproject.toml exactly as a third-party package would be."""
