"""Plugin discovery (pluggy + the ``otbench`` entry-point group) and the registry of solvers, tasks, metrics.

Built-in plugins are found exactly like third-party ones: through entry points. ``OTBENCH_LOAD_PLUGINS``
limits loading to a comma-separated list of entry-point names (set it to an empty string to load none).
``OTBENCH_PLUGIN_MODULES`` names extra modules to register as plugins without packaging them (handy while
developing a plugin; the CLI's ``--plugin-module`` sets it): each entry is an importable module name or the
path of a ``.py`` file or package folder, so a module in the current folder loads without ``PYTHONPATH``. A plugin that fails to import, or
whose hooks raise, is recorded in ``Registry.failures`` and the others still load.

Entry points are loaded one by one rather than with pluggy's ``load_setuptools_entrypoints``, which stops at
the first plugin that fails to import; ``check_pending`` then rejects hooks with misspelled names.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import traceback
from pathlib import Path
from dataclasses import dataclass, field
from types import ModuleType

import pluggy

from otbench import hookspecs
from otbench.api import Metric, Solver, Task

ENTRY_POINT_GROUP = "otbench"
LOAD_PLUGINS_ENV = "OTBENCH_LOAD_PLUGINS"
PLUGIN_MODULES_ENV = "OTBENCH_PLUGIN_MODULES"
CORE_PLUGIN = "otbench.metrics"


@dataclass
class Entry:
    """A registered class and where it came from."""

    cls: type
    plugin: str
    distribution: str | None
    version: str | None


@dataclass
class PluginFailure:
    plugin: str
    error: str
    traceback: str


@dataclass
class Registry:
    solvers: dict[str, Entry] = field(default_factory=dict)
    tasks: dict[str, Entry] = field(default_factory=dict)
    metrics: dict[str, Entry] = field(default_factory=dict)
    plugins: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    def solver(self, name: str) -> Entry:
        return _lookup(self.solvers, name, "solver")

    def task(self, name: str) -> Entry:
        return _lookup(self.tasks, name, "task")

    def metric(self, name: str) -> Entry:
        return _lookup(self.metrics, name, "metric")


def suggest(name: str, known: list[str]) -> str:
    """A 'did you mean' hint for an unknown name, or an empty string."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _lookup(table: dict[str, Entry], name: str, what: str) -> Entry:
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"unknown {what} {name!r}{suggest(name, sorted(table))}; known: {sorted(table)}") from None


def make_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("otbench")
    pm.add_hookspecs(hookspecs)
    return pm


def _selected(name: str) -> bool:
    allowed = os.environ.get(LOAD_PLUGINS_ENV)
    if allowed is None:
        return True
    return name in {n.strip() for n in allowed.split(",") if n.strip()}


def load_registry(extra_plugins: list[ModuleType | object] | None = None) -> Registry:
    """Discover plugins and collect everything they register.

    ``extra_plugins`` are registered in addition to the entry points (tests use it for in-memory plugins).
    """
    registry = Registry()
    pm = make_plugin_manager()

    from otbench import metrics as core_metrics  # the core's own metrics, registered as a plugin

    pm.register(core_metrics, name=CORE_PLUGIN)
    registry.plugins[CORE_PLUGIN] = ("otbench", _dist_version("otbench"))

    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if not _selected(ep.name) or pm.has_plugin(ep.name):
            continue
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            registry.failures.append(PluginFailure(ep.name, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
            continue
        registry.plugins[ep.name] = (dist, version)
    for module_name in dict.fromkeys(m.strip() for m in os.environ.get(PLUGIN_MODULES_ENV, "").split(",") if m.strip()):
        try:
            module = import_plugin_module(module_name)
            if pm.has_plugin(module.__name__):
                continue
            pm.register(module, name=module.__name__)
            registry.plugins[module.__name__] = (None, None)
        except Exception as exc:
            registry.failures.append(PluginFailure(module_name, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    for i, plugin in enumerate(extra_plugins or []):
        name = getattr(plugin, "__name__", f"extra-{i}")
        pm.register(plugin, name=name)
        registry.plugins[name] = (None, None)
    pm.check_pending()

    hooks = (
        ("otbench_register_solvers", registry.solvers, Solver),
        ("otbench_register_tasks", registry.tasks, Task),
        ("otbench_register_metrics", registry.metrics, Metric),
    )
    for hook_name, table, base in hooks:
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = impl.plugin_name
            dist, version = registry.plugins.get(plugin_name, (None, None))

            def register(cls: type, _table=table, _base=base, _plugin=plugin_name, _d=dist, _v=version) -> None:
                if not (isinstance(cls, type) and issubclass(cls, _base)) or not cls.name:
                    raise TypeError(f"{cls!r} is not a named {_base.__name__} subclass")
                if cls.name in _table and _table[cls.name].cls is not cls:
                    raise ValueError(f"{_base.__name__} name {cls.name!r} already registered by {_table[cls.name].plugin}")
                _table[cls.name] = Entry(cls, _plugin, _d, _v)

            try:
                impl.function(register)
            except Exception as exc:
                registry.failures.append(
                    PluginFailure(plugin_name, f"{hook_name}: {type(exc).__name__}: {exc}", traceback.format_exc())
                )
    return registry


def resolve_plugin_module(name: str, cwd: str | Path | None = None) -> str:
    """What to put in ``OTBENCH_PLUGIN_MODULES`` for ``--plugin-module NAME``.

    An importable module name stays as it is; a name that only exists in ``cwd`` (``NAME.py`` or a package
    folder ``NAME/``) and a path to such a file or folder become an absolute path, so that worker processes
    (which never put the working directory on ``sys.path``) load the same file.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    candidate = Path(name)
    if name.endswith(".py") or os.sep in name or candidate.is_absolute():
        path = candidate if candidate.is_absolute() else base / candidate
        if not path.exists():
            raise FileNotFoundError(f"plugin module file {path} does not exist")
        return str(path.resolve())
    if "." not in name:  # the file the author sees in the current folder wins over an installed namesake
        for path in (base / f"{name}.py", base / name / "__init__.py"):
            if path.is_file():
                return str(path.parent.resolve() if path.name == "__init__.py" else path.resolve())
    return name  # an importable name; if it is not, loading it reports the ImportError as a plugin failure


def import_plugin_module(entry: str) -> ModuleType:
    """Import a plugin module by name, or from the path of a ``.py`` file or package folder."""
    path = Path(entry)
    if not path.is_absolute():
        return importlib.import_module(entry)
    init = path / "__init__.py" if path.is_dir() else path
    name = path.stem if path.is_file() else path.name
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(init):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(path)] if path.is_dir() else None)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load a plugin module from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so that pickling its classes and relative imports work
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


_HASHES: dict[tuple[str, float, int], str] = {}


def _file_hash(path: str) -> str:
    st = os.stat(path)
    key = (path, st.st_mtime, st.st_size)
    if key not in _HASHES:
        with open(path, "rb") as fh:
            _HASHES[key] = hashlib.sha256(fh.read()).hexdigest()
    return _HASHES[key]


def source_hash(cls: type) -> str:
    """A short hash of the source files that define ``cls``: its module's file and those of its base classes
    outside otbench's core. Edits to other helper modules it imports are not seen (bump ``version``)."""
    files = []
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        if module is None or klass.__module__ == "builtins" or klass.__module__.split(".")[0] == "otbench":
            continue
        try:
            path = inspect.getsourcefile(module)
        except TypeError:  # built-in or defined interactively
            path = None
        if path and os.path.isfile(path) and path not in files:
            files.append(path)
    if not files:
        return ""
    digest = hashlib.sha256("".join(_file_hash(f) for f in files).encode()).hexdigest()
    return digest[:12]


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


_CACHED: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, loaded once."""
    global _CACHED
    if _CACHED is None or refresh:
        _CACHED = load_registry()
    return _CACHED
