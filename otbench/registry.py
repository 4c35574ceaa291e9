"""Plugin discovery (pluggy + the ``otbench`` entry-point group) and the registry of solvers, tasks, metrics.

Built-in plugins are found exactly like third-party ones: through entry points. ``OTBENCH_LOAD_PLUGINS``
limits loading to a comma-separated list of entry-point names (set it to an empty string to load none).
``OTBENCH_PLUGIN_MODULES`` names extra modules to register as plugins without packaging them (handy while
developing a plugin; the CLI's ``--plugin-module`` sets it): each entry is an importable module name or the
path of a ``.py`` file or package folder, so a module in the current folder loads without ``PYTHONPATH``. A plugin that fails to import, or
whose hooks raise, is recorded in ``Registry.failures`` and the others still load.

Entry points are loaded one by one rather than with pluggy's ``load_setuptools_entrypoints``, which stops at
the first plugin that fails to import; ``check_pending`` then rejects hooks with misspelled names.

**Declarations (lazy loading).** Importing a plugin usually imports torch (seconds), which ``otbench list``,
``show``, ``plugins`` and ``validate`` do not need. So the registry keeps, per plugin, a *declaration record*:
what the plugin's hooks registered (per component its name, ``module:qualname`` and the class attributes the
command line and suite validation read, see ``component_meta``) and the sha256 of every source file that can
change them (the plugin module, the modules it imports from its own package and from otbench, and the
modules of each class's bases). A record is used only while every recorded hash still matches (content, not
mtime: a fresh checkout stays valid); the component is then registered as an ``Entry`` whose ``cls`` imports
the plugin on first access. Records come from ``otbench_plugins/_manifest.json`` (committed, generated with
``otbench plugins --write-manifest`` or ``python -m otbench.registry``) and from a user cache
(``$OTBENCH_CACHE`` or ``$XDG_CACHE_HOME/otbench`` or ``~/.cache/otbench``, folder ``plugin-manifests``),
written after a plugin was imported. A missing, unreadable or stale record falls back to importing the plugin;
a plugin module that is already imported is always used directly. Plugins keep calling ``register(Cls)``.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from otbench import hookspecs
from otbench.api import Metric, Solver, Task

ENTRY_POINT_GROUP = "otbench"
LOAD_PLUGINS_ENV = "OTBENCH_LOAD_PLUGINS"
PLUGIN_MODULES_ENV = "OTBENCH_PLUGIN_MODULES"
CACHE_ENV = "OTBENCH_CACHE"
CORE_PLUGIN = "otbench.metrics"
#: the package that ships the built-in plugins and their committed declaration manifest
BUILTIN_PACKAGE = "otbench_plugins"
MANIFEST_NAME = "_manifest.json"
#: bump when the layout of a declaration record or of ``component_meta`` changes (older records are ignored)
MANIFEST_FORMAT = 1

#: (hook name, category, base class)
HOOKS = (
    ("otbench_register_solvers", "solver", Solver),
    ("otbench_register_tasks", "task", Task),
    ("otbench_register_metrics", "metric", Metric),
)


class PluginImportError(ImportError):
    """A declared component's plugin failed to import (or no longer registers it) when its class was needed."""


class StaleDeclarationWarning(UserWarning):
    """A plugin's declaration record disagreed with its classes once imported; the classes are used."""


class Declaration:
    """A component known from its plugin's declaration record, without importing it.

    It carries the class attributes that listing, ``show`` and suite validation read, under the same names
    (``name``, ``version``, ``defaults``, ``param_schema``, ``kinds``, ``costs``, ``provides``,
    ``provides_by_kind``, ``inputs``, ``threads``, ``kind``, ``primary_metric``, ``needs``, ``truth_needs``,
    ``outputs``) and ``describe()``, so that code written against a class works on it unchanged. Any other
    attribute is read from the class, which imports it (``load`` gives it).
    """

    def __init__(self, meta: dict[str, Any], load: Callable[[], type] | None = None) -> None:
        self._meta, self._load = meta, load
        for key, value in meta.items():
            if key not in ("doc", "description", "module", "qualname", "category", "source_hash"):
                setattr(self, key, value)

    def describe(self) -> str:
        return self._meta.get("description", "")

    def __getattr__(self, name: str) -> Any:  # only called for attributes that were not declared
        if name.startswith("__") or self.__dict__.get("_load") is None:
            raise AttributeError(name)
        return getattr(self._load(), name)

    def parts_for(self, kind: str) -> frozenset[str]:
        return dict(getattr(self, "provides_by_kind", {})).get(kind, getattr(self, "provides", frozenset()))

    def __repr__(self) -> str:
        return f"<declared {self._meta.get('category')} {self._meta.get('name')!r} ({self._meta.get('module')}:" \
               f"{self._meta.get('qualname')})>"


@dataclass(eq=False, repr=False)
class Entry:
    """A registered component and where it came from.

    ``cls`` is the class; for a component registered from a declaration record it is imported on first access
    (``PluginImportError`` if that fails; the failure is also added to ``Registry.failures``). ``info`` gives
    the class attributes without importing anything: the class itself once its module is imported (by anyone:
    then a patched attribute is seen as it is), else its ``Declaration``. Passing ``cls`` to the
    constructor (or to ``dataclasses.replace``) makes an ordinary, imported entry: ``meta`` and ``loader`` are
    then ignored.
    """

    cls: type | None
    plugin: str
    distribution: str | None = None
    version: str | None = None
    #: the declared class attributes (``component_meta``) of a not-yet-imported component
    meta: dict[str, Any] | None = None
    loader: "_PluginLoader | None" = None

    def __post_init__(self) -> None:
        if self._cls is not None:
            self.meta, self.loader = None, None
        elif self.meta is None or self.loader is None:
            raise ValueError("an Entry needs a class, or declared metadata and the loader of its plugin")

    @property
    def loaded(self) -> bool:
        """Whether the class is imported."""
        return self._cls is not None

    @property
    def category(self) -> str:
        return self.meta["category"] if self._cls is None else _category(self._cls)

    def _live(self) -> type | None:
        """The class if it is loaded, or can be at no cost because its module is imported already."""
        if self._cls is None and self.loader is not None and self.loader.error is None \
                and self.loader.source.imported([self.meta]):
            try:
                return self.cls
            except PluginImportError:
                return None
        return self._cls

    @property
    def info(self) -> Any:
        """The component's class attributes: the class if imported, else its ``Declaration`` (imports nothing)."""
        cls = self._live()
        if cls is not None:
            return cls
        if self._declaration is None:
            self._declaration = Declaration(self.meta, lambda: self.cls)
        return self._declaration

    @property
    def doc(self) -> str | None:
        cls = self._live()
        return cls.__doc__ if cls is not None else self.meta.get("doc")

    @property
    def class_path(self) -> str:
        """``module.qualname`` of the class."""
        if self._cls is not None:
            return f"{self._cls.__module__}.{self._cls.__qualname__}"
        return f"{self.meta['module']}.{self.meta['qualname']}"

    @property
    def source_hash(self) -> str:
        """``source_hash`` of the class (from the declaration while it is not imported: the record is only
        used while the files it hashes are unchanged)."""
        cls = self._live()
        return source_hash(cls) if cls is not None else self.meta.get("source_hash", "")

    def __repr__(self) -> str:
        state = "" if self._cls is not None else ", not imported"
        return f"Entry({self.class_path}, plugin={self.plugin!r}{state})"


def _get_cls(self: Entry) -> type:
    if self._cls is None:
        cls = self.loader.load().get((self.meta["category"], self.meta["name"]))  # type: ignore[union-attr]
        if cls is None:
            raise PluginImportError(
                f"plugin {self.plugin!r} no longer registers {self.meta['category']} {self.meta['name']!r} "
                f"(its declaration record is stale; `otbench plugins --write-manifest` regenerates the built-in one)")
        self._cls = cls
    return self._cls


def _set_cls(self: Entry, value: type | None) -> None:
    self._cls = value
    self._declaration = None


Entry.cls = property(_get_cls, _set_cls, doc=Entry.__doc__)  # type: ignore[assignment]


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
    #: plugins registered from a declaration record, by plugin name (imported on first use of a class)
    loaders: dict[str, "_PluginLoader"] = field(default_factory=dict)

    def solver(self, name: str) -> Entry:
        return _lookup(self.solvers, name, "solver")

    def task(self, name: str) -> Entry:
        return _lookup(self.tasks, name, "task")

    def metric(self, name: str) -> Entry:
        return _lookup(self.metrics, name, "metric")

    def table(self, category: str) -> dict[str, Entry]:
        return {"solver": self.solvers, "task": self.tasks, "metric": self.metrics}[category]

    def imported(self, plugin: str) -> bool:
        """Whether ``plugin``'s module is imported (False while it is only declared, or when it failed)."""
        loader = self.loaders.get(plugin)
        return loader is None or loader.classes is not None

    def load_all(self) -> None:
        """Import every declared plugin now; failures go to ``failures`` (nothing raises)."""
        for loader in list(self.loaders.values()):
            try:
                loader.load()
            except PluginImportError:
                pass


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


def _category(cls: type) -> str:
    for _, category, base in HOOKS:
        if isinstance(cls, type) and issubclass(cls, base):
            return category
    raise TypeError(f"{cls!r} is not a Solver, Task or Metric subclass")


# -- declarations: what a class says about itself, encoded as JSON ----------------------------------------

def component_meta(cls: type) -> dict[str, Any]:
    """The class attributes the registry declares for ``cls`` (all that list, show, validate and plan_runs
    read), as plain Python values."""
    category = _category(cls)
    meta: dict[str, Any] = {
        "category": category, "name": cls.name, "module": cls.__module__, "qualname": cls.__qualname__,
        "doc": cls.__doc__, "description": cls.describe(), "source_hash": source_hash(cls),
        "version": getattr(cls, "version", None),
    }
    if category in ("solver", "task"):
        meta["defaults"] = dict(cls.defaults)
        meta["param_schema"] = {k: dict(v) for k, v in dict(getattr(cls, "param_schema", None) or {}).items()}
    if category == "solver":
        meta.update(kinds=frozenset(cls.kinds), costs=None if cls.costs is None else frozenset(cls.costs),
                    provides=frozenset(cls.provides), inputs=cls.inputs, threads=cls.threads,
                    provides_by_kind={k: frozenset(v) for k, v in dict(cls.provides_by_kind).items()})
    elif category == "task":
        meta.update(kind=cls.kind, primary_metric=tuple(cls.primary_metric))
    else:
        meta.update(needs=frozenset(cls.needs), truth_needs=frozenset(cls.truth_needs), kinds=frozenset(cls.kinds),
                    outputs=dict(cls.outputs))
    return meta


class _NotDeclarable(TypeError):
    """A class attribute that JSON cannot carry faithfully (the plugin is then always imported)."""


_TAGS = ("__tuple__", "__frozenset__", "__set__")


def _encode(value: Any) -> Any:
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [_encode(v) for v in value]
    if kind is tuple:
        return {"__tuple__": [_encode(v) for v in value]}
    if kind in (frozenset, set):
        items = sorted((_encode(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
        return {"__frozenset__" if kind is frozenset else "__set__": items}
    if kind is dict and all(type(k) is str and not k.startswith("__") for k in value):
        return {k: _encode(v) for k, v in value.items()}
    raise _NotDeclarable(f"{value!r} ({kind.__name__})")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            (tag, items), = value.items()
            if tag == "__tuple__":
                return tuple(_decode(v) for v in items)
            if tag == "__frozenset__":
                return frozenset(_decode(v) for v in items)
            if tag == "__set__":
                return {_decode(v) for v in items}
        return {k: _decode(v) for k, v in value.items()}
    return value


def _canonical(meta: dict[str, Any]) -> str:
    return json.dumps(_encode(meta), sort_keys=True)


# -- source files a declaration depends on ----------------------------------------------------------------

_HASHES: dict[tuple[str, float, int], str] = {}


def _file_hash(path: str) -> str:
    st = os.stat(path)
    key = (path, st.st_mtime, st.st_size)
    if key not in _HASHES:
        with open(path, "rb") as fh:
            _HASHES[key] = hashlib.sha256(fh.read()).hexdigest()
    return _HASHES[key]


def _module_file(name: str) -> str | None:
    """The source file of module ``name``, found without importing it (its parent packages are imported)."""
    module = sys.modules.get(name)
    if module is not None:
        path = getattr(module, "__file__", None)
        return path if path and os.path.isfile(path) else None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None or not spec.has_location or not spec.origin or not os.path.isfile(spec.origin):
        return None
    return spec.origin


def _static_imports(path: str, module_name: str, is_package: bool) -> set[str]:
    """Absolute names of the modules a source file imports (anywhere in it), and ``pkg.name`` candidates of
    ``from pkg import name``."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return set()
    package = module_name if is_package else module_name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts):
                    continue
                base = ".".join(parts[:len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base:
                names.add(base)
            names.update(f"{base}.{alias.name}" if base else alias.name for alias in node.names)
    return names


def _locate(name: str, tops: dict[str, tuple[str, list[str]]]) -> tuple[str, str] | None:
    """``(module name, source file)`` of the longest module prefix of ``name`` (``pkg.mod.attr`` -> ``pkg.mod``)
    under one of ``tops`` (top-level name -> its file and package folders), found from the folders alone:
    nothing is imported, and the answer does not depend on what happens to be imported already."""
    parts = name.split(".")
    if parts[0] not in tops:
        return None
    path, dirs = tops[parts[0]]
    found = (parts[0], path)
    for i in range(1, len(parts)):
        step = None
        for d in dirs:
            if os.path.isfile(os.path.join(d, parts[i], "__init__.py")):
                step = (os.path.join(d, parts[i], "__init__.py"), [os.path.join(d, parts[i])])
                break
            if os.path.isfile(os.path.join(d, parts[i] + ".py")):
                step = (os.path.join(d, parts[i] + ".py"), [])
                break
        if step is None:
            break  # an attribute imported from a module, not a module
        found, dirs = (".".join(parts[:i + 1]), step[0]), step[1]
        if not dirs:
            break
    return found


def _beside(name: str, root_dir: str) -> tuple[str, str] | None:
    """A module imported by a plugin file loaded from a path, when it lies in the same folder."""
    first = name.split(".")[0]
    package = os.path.join(root_dir, first)
    if os.path.isfile(os.path.join(package, "__init__.py")):
        return _locate(name, {first: (os.path.join(package, "__init__.py"), [package])})
    if os.path.isfile(package + ".py"):
        return first, package + ".py"
    return None


def _dependencies(module: ModuleType, classes: Iterable[type], root_dir: str | None = None) -> list[dict[str, str]]:
    """The source files whose content decides what ``module`` registers: the module, the modules of its own
    top-level package and of otbench that it imports anywhere in its source (transitively; for a plugin loaded
    from a path, also modules lying beside it in ``root_dir``), and the modules of the registered classes and
    their bases. Each as ``{"module", "path", "sha256"}``, sorted by module name."""
    tops: dict[str, tuple[str, list[str]]] = {}
    for top in (module.__name__.split(".")[0], "otbench"):
        package = sys.modules.get(top)
        path = getattr(package, "__file__", None)
        if path and os.path.isfile(path):
            tops[top] = (path, list(getattr(package, "__path__", None) or []))
    found: dict[str, str] = {}
    todo: list[tuple[str, str]] = []
    root_file = getattr(module, "__file__", None)
    if root_file and os.path.isfile(root_file):
        todo.append((module.__name__, root_file))
    for cls in classes:
        for klass in cls.__mro__:
            path = getattr(sys.modules.get(klass.__module__), "__file__", None)
            if path and path.endswith(".py") and os.path.isfile(path):
                found.setdefault(klass.__module__, path)  # hashed, its imports not followed (outside the plugin)
    while todo:
        name, path = todo.pop()
        if found.get(name) == path and name != module.__name__:
            continue
        found[name] = path
        for imported in _static_imports(path, name, path.endswith("__init__.py")):
            located = _locate(imported, tops)
            if located is None and root_dir is not None:
                located = _beside(imported, root_dir)
            if located is not None and located[0] not in found and all(located[0] != n for n, _ in todo):
                todo.append(located)
    return [{"module": n, "path": os.path.abspath(p), "sha256": _file_hash(p)} for n, p in sorted(found.items())]


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


# -- where declaration records live ------------------------------------------------------------------------

def cache_root() -> Path:
    """``$OTBENCH_CACHE``, else ``$XDG_CACHE_HOME/otbench``, else ``~/.cache/otbench`` (not created)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache") / "otbench"


def builtin_manifest_path() -> Path | None:
    """Where the committed manifest of the built-in plugins lies (found without importing them)."""
    try:
        spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / MANIFEST_NAME


_BUILTIN: dict[str, Any] | None = None


def _builtin_records() -> dict[str, Any]:
    global _BUILTIN
    if _BUILTIN is None:
        _BUILTIN = {}
        path = builtin_manifest_path()
        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
            if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT and isinstance(data.get("plugins"), dict):
                _BUILTIN = data["plugins"]
        except (OSError, ValueError):
            pass
    return _BUILTIN


def _cache_file(plugin: str, target: str, root_file: str) -> Path:
    digest = hashlib.sha256(f"{plugin}\0{target}\0{root_file}".encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in plugin)[:60]
    return cache_root() / "plugin-manifests" / f"{safe}-{digest}.json"


def _valid(record: Any, plugin: str, target: str, root_file: str, by_path: bool) -> bool:
    """Whether ``record`` declares ``plugin`` loaded from ``target`` and every file it hashes is unchanged.

    Built-in records name modules (resolved with ``find_spec``: the install location may differ); user-cache
    records name absolute paths, and their plugin module must still resolve to the recorded file."""
    try:
        if record.get("format") != MANIFEST_FORMAT or record.get("plugin") != plugin or record.get("target") != target:
            return False
        if by_path and record.get("root") != root_file:
            return False
        for dep in record["files"]:
            path = dep["path"] if by_path else _module_file(dep["module"])
            if path is None or not os.path.isfile(path) or _file_hash(path) != dep["sha256"]:
                return False
        return isinstance(record["components"], list)
    except (AttributeError, KeyError, TypeError, OSError):
        return False


def _make_record(source: "_Source", root_file: str, module: ModuleType, classes: list[type]) -> dict[str, Any]:
    """A declaration record of what ``module`` registered (raises ``_NotDeclarable`` if JSON cannot hold it)."""
    components = [_encode(component_meta(cls)) for cls in classes]
    root_dir = os.path.dirname(root_file) if source.path is not None else None
    return {"format": MANIFEST_FORMAT, "plugin": source.name, "target": source.target, "root": root_file,
            "files": _dependencies(module, classes, root_dir), "components": components}


def _write_cache(record: dict[str, Any]) -> None:
    """Store a record in the user cache (atomically); a cache that cannot be written is silently skipped."""
    path = _cache_file(record["plugin"], record["target"], record["root"])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh)  # keys keep their order: parameters are shown as declared
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _read_cache(plugin: str, target: str, root_file: str) -> Any:
    try:
        return json.loads(_cache_file(plugin, target, root_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -- loading ------------------------------------------------------------------------------------------------

@dataclass
class _Source:
    """One plugin to load: an entry point, a module named in OTBENCH_PLUGIN_MODULES, the core, or an extra."""

    name: str  # the plugin name (entry-point name; module name for OTBENCH_PLUGIN_MODULES)
    target: str | None  # what a record is keyed by; None: never declared lazily (extras)
    load: Callable[[], Any]
    distribution: tuple[str | None, str | None] = (None, None)
    module_name: str | None = None  # the module's name in sys.modules
    path: str | None = None  # a plugin given as a file or folder path
    object: Any = None
    label: str = ""  # how a failure names it (the OTBENCH_PLUGIN_MODULES entry as written)

    def root_file(self) -> str | None:
        if self.path is not None:
            p = Path(self.path)
            init = p / "__init__.py" if p.is_dir() else p
            return str(init) if init.is_file() else None
        return _module_file(self.module_name) if self.module_name else None

    def imported(self, components: list[dict[str, Any]] = ()) -> bool:
        """Whether the plugin module, and the modules of ``components`` (declarations), are imported already."""
        return self.module_name in sys.modules and all(c.get("module") in sys.modules for c in components)


class _PluginLoader:
    """Imports a declared plugin on first use of one of its classes, and checks the declaration against them."""

    def __init__(self, registry: Registry, source: _Source, root_file: str) -> None:
        self.registry, self.source, self.root_file = registry, source, root_file
        self.classes: dict[tuple[str, str], type] | None = None
        self.error: str | None = None

    def load(self) -> dict[tuple[str, str], type]:
        if self.classes is not None:
            return self.classes
        if self.error is not None:
            raise PluginImportError(self.error)
        before = set(sys.modules)
        try:
            plugin = self.source.load()
            pm = make_plugin_manager()
            pm.register(plugin, name=self.source.name)
            pm.check_pending()
            classes: dict[tuple[str, str], type] = {}
            for hook_name, category, base in HOOKS:
                for impl in getattr(pm.hook, hook_name).get_hookimpls():
                    def register(cls: type, _category: str = category, _base: type = base) -> None:
                        if not (isinstance(cls, type) and issubclass(cls, _base)) or not cls.name:
                            raise TypeError(f"{cls!r} is not a named {_base.__name__} subclass")
                        classes[(_category, cls.name)] = cls
                    impl.function(register)
        except Exception as exc:
            self.error = f"plugin {self.source.name!r} failed to load: {type(exc).__name__}: {exc}"
            self.registry.failures.append(PluginFailure(self.source.label or self.source.name,
                                                        f"{type(exc).__name__}: {exc}", traceback.format_exc()))
            raise PluginImportError(self.error) from exc
        self.classes = classes
        self._check(plugin, classes, all(c.__module__ not in before for c in classes.values()))
        return classes

    def _check(self, plugin: Any, classes: dict[tuple[str, str], type], fresh: bool) -> None:
        """Compare the declared components with the imported classes; on a difference, warn once, let the
        classes win and rewrite the user cache."""
        declared = {(e.meta["category"], e.meta["name"]): e for table in (self.registry.solvers,
                    self.registry.tasks, self.registry.metrics) for e in table.values()
                    if e.loader is self and e.meta is not None}
        differ = sorted(f"{c} {n}" for (c, n), e in declared.items() if not _agrees(classes.get((c, n)), e.meta))
        added = sorted(f"{c} {n}" for (c, n) in classes if (c, n) not in declared)
        for (category, name), cls in classes.items():
            entry = declared.get((category, name))
            if entry is not None:
                entry.cls = cls  # the class wins over its declaration
            elif name not in self.registry.table(category):
                self.registry.table(category)[name] = Entry(cls, self.source.name, *self.source.distribution)
        if (differ or added) and fresh:  # (an already imported class may differ only because a test patched it)
            warnings.warn(f"plugin {self.source.name!r}: its declaration record was stale ({', '.join(differ + added)} "
                          "differ from the imported classes); using the classes. Regenerate the built-in manifest "
                          "with `otbench plugins --write-manifest`", StaleDeclarationWarning, stacklevel=3)
            if isinstance(plugin, ModuleType):
                try:
                    _write_cache(_make_record(self.source, self.root_file, plugin, list(classes.values())))
                except _NotDeclarable:
                    pass


def _agrees(cls: type | None, meta: dict[str, Any] | None) -> bool:
    """Whether ``cls`` exists and declares exactly ``meta``."""
    try:
        return cls is not None and meta is not None and _canonical(component_meta(cls)) == _canonical(meta)
    except (_NotDeclarable, AttributeError, TypeError):
        return False


def _import(name: str) -> Callable[[], ModuleType]:
    return lambda: importlib.import_module(name)


def _sources(extra_plugins: list[Any] | None) -> list[_Source]:
    sources = [_Source(CORE_PLUGIN, CORE_PLUGIN, _import(CORE_PLUGIN), ("otbench", _dist_version("otbench")),
                       module_name=CORE_PLUGIN)]
    dists: dict[int, tuple[str | None, str | None]] = {}  # reading a distribution's metadata costs ~1 ms
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if not _selected(ep.name) or any(s.name == ep.name for s in sources):
            continue
        if ep.dist is None:
            dist: tuple[str | None, str | None] = (None, None)
        else:
            if id(ep.dist) not in dists:
                meta = ep.dist.metadata
                dists[id(ep.dist)] = (meta["Name"], meta["Version"])
            dist = dists[id(ep.dist)]
        sources.append(_Source(ep.name, ep.value, ep.load, dist, module_name=ep.module))
    for entry in dict.fromkeys(m.strip() for m in os.environ.get(PLUGIN_MODULES_ENV, "").split(",") if m.strip()):
        path = Path(entry)
        name = (path.stem if path.suffix == ".py" else path.name) if path.is_absolute() else entry
        sources.append(_Source(name, entry, lambda entry=entry: import_plugin_module(entry), module_name=name,
                               path=entry if path.is_absolute() else None, label=entry))
    for i, plugin in enumerate(extra_plugins or []):
        name = getattr(plugin, "__name__", f"extra-{i}")
        sources.append(_Source(name, None, lambda plugin=plugin: plugin, object=plugin))
    return sources


def _declared_record(source: _Source) -> tuple[dict[str, Any], str] | None:
    """A valid declaration record of ``source`` and its plugin module's file, or None (then it is imported)."""
    if source.target is None:
        return None
    root_file = source.root_file()
    if root_file is None:
        return None
    for record, by_path in ((_read_cache(source.name, source.target, root_file), True),
                            (_builtin_records().get(source.name), False)):
        if record is not None and _valid(record, source.name, source.target, root_file, by_path):
            components = [_decode(c) for c in record["components"]]
            if source.imported(components):
                return None  # importing costs nothing now, and the live classes are the truth
            return components, root_file
    return None


def load_registry(extra_plugins: list[ModuleType | object] | None = None, lazy: bool = True) -> Registry:
    """Discover plugins and collect everything they register.

    ``extra_plugins`` are registered in addition to the entry points (tests use it for in-memory plugins).
    With ``lazy`` (the default) a plugin with a valid declaration record is registered from it without being
    imported (see the module docstring); ``lazy=False`` imports every plugin now.
    """
    registry = Registry()
    pm = make_plugin_manager()
    plan: list[tuple[_Source, Any]] = []  # (source, (components, root file)) or (source, None) when imported
    already = set(sys.modules)  # a class whose module was imported before this call may have been patched
    for source in _sources(extra_plugins):
        if source.name in registry.plugins:
            continue  # the same plugin named twice
        try:
            declared = _declared_record(source) if lazy else None
        except Exception:  # noqa: BLE001 - a broken record must never break loading: import instead
            declared = None
        if declared is not None:
            plan.append((source, declared))
            registry.plugins[source.name] = source.distribution
            continue
        try:
            plugin = source.load()
            if source.object is None and pm.is_registered(plugin):
                continue  # the same module, named twice (e.g. an entry point also given in OTBENCH_PLUGIN_MODULES)
            pm.register(plugin, name=source.name)
        except Exception as exc:  # a broken plugin must not take the others down
            registry.failures.append(PluginFailure(source.label or source.name, f"{type(exc).__name__}: {exc}",
                                                   traceback.format_exc()))
            continue
        registry.plugins[source.name] = source.distribution
        plan.append((source, None))
    pm.check_pending()

    for source, declared in plan:
        if declared is not None:
            components, root_file = declared
            loader = _PluginLoader(registry, source, root_file)
            registry.loaders[source.name] = loader
            for meta in components:
                table = registry.table(meta["category"])
                if meta["name"] in table:
                    registry.failures.append(PluginFailure(
                        source.name, f"{meta['category']} name {meta['name']!r} already registered by "
                        f"{table[meta['name']].plugin}", ""))
                    continue
                table[meta["name"]] = Entry(None, source.name, *source.distribution, meta=meta, loader=loader)
            continue
        registered: list[type] = []
        failed = False
        for hook_name, category, base in HOOKS:
            table = registry.table(category)
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                if impl.plugin_name != source.name:
                    continue

                def register(cls: type, _table=table, _base=base, _src=source) -> None:
                    if not (isinstance(cls, type) and issubclass(cls, _base)) or not cls.name:
                        raise TypeError(f"{cls!r} is not a named {_base.__name__} subclass")
                    if cls.name in _table and not _same_class(_table[cls.name], cls):
                        raise ValueError(f"{_base.__name__} name {cls.name!r} already registered by "
                                         f"{_table[cls.name].plugin}")
                    if cls.name not in _table:
                        _table[cls.name] = Entry(cls, _src.name, *_src.distribution)
                    registered.append(cls)

                try:
                    impl.function(register)
                except Exception as exc:
                    failed = True
                    registry.failures.append(
                        PluginFailure(source.name, f"{hook_name}: {type(exc).__name__}: {exc}", traceback.format_exc()))
        fresh = source.target is not None and all(c.__module__ not in already for c in registered)
        if fresh and not failed and lazy:  # imported by this call: its classes are pristine (no test patched them)
            plugin = pm.get_plugin(source.name)
            root_file = source.root_file()
            if isinstance(plugin, ModuleType) and root_file is not None:
                try:
                    _write_cache(_make_record(source, root_file, plugin, registered))
                except _NotDeclarable:
                    pass  # a class attribute JSON cannot hold: this plugin is always imported
    return registry


def _same_class(entry: Entry, cls: type) -> bool:
    if entry.loaded:
        return entry.cls is cls
    return (entry.meta or {}).get("module") == cls.__module__ and entry.meta.get("qualname") == cls.__qualname__


# -- the committed manifest of the built-in plugins ---------------------------------------------------------

def builtin_sources() -> list[_Source]:
    """The core metrics and every entry point of the otbench distribution (whatever OTBENCH_LOAD_PLUGINS says)."""
    sources = [_Source(CORE_PLUGIN, CORE_PLUGIN, _import(CORE_PLUGIN), module_name=CORE_PLUGIN)]
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.dist is not None and ep.dist.name == "otbench":
            sources.append(_Source(ep.name, ep.value, ep.load, module_name=ep.module))
    return sources


def builtin_manifest() -> dict[str, Any]:
    """The declaration manifest of the built-in plugins, generated by importing them (raises if one fails)."""
    plugins: dict[str, Any] = {}
    for source in builtin_sources():
        module = source.load()
        pm = make_plugin_manager()
        pm.register(module, name=source.name)
        pm.check_pending()
        classes: list[type] = []
        for hook_name, _, _ in HOOKS:
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                impl.function(classes.append)
        record = _make_record(source, "", module, classes)
        del record["root"]  # install locations differ: built-in records name modules, not paths
        record["files"] = [{"module": f["module"], "sha256": f["sha256"]} for f in record["files"]]
        plugins[source.name] = record
    return {"format": MANIFEST_FORMAT,
            "generated_by": "otbench plugins --write-manifest (or python -m otbench.registry); do not edit",
            "plugins": dict(sorted(plugins.items()))}


def write_builtin_manifest(path: str | Path | None = None) -> Path:
    """Regenerate the committed manifest of the built-in plugins (``otbench_plugins/_manifest.json``)."""
    global _BUILTIN
    target = Path(path) if path is not None else builtin_manifest_path()
    if target is None:
        raise FileNotFoundError(f"package {BUILTIN_PACKAGE} is not installed")
    text = json.dumps(builtin_manifest(), indent=1) + "\n"
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    _BUILTIN = None
    return target


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


if __name__ == "__main__":  # python -m otbench.registry: regenerate the built-in manifest
    print(f"wrote {write_builtin_manifest()}")
