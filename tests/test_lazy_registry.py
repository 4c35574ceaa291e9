"""Lazy plugin registration: declaration records (committed manifest + user cache), first-use import, fallbacks.

Most tests use a throw-away plugin file loaded through OTBENCH_PLUGIN_MODULES with a private OTBENCH_CACHE, so
that whether the plugin was imported can be observed (the built-in plugins are already imported in this process).
"""

from __future__ import annotations

import builtins
import json
import math
import os
import pickle
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import pytest

from otbench import registry as reg_mod
from otbench.registry import (PluginImportError, StaleDeclarationWarning, _decode, _encode, _NotDeclarable,
                              builtin_manifest, builtin_manifest_path, load_registry)
from otbench.suite import SuiteError, Suite, plan_runs, validate_suite

PLUGIN = '''
"""A plugin for the lazy-registry tests; counts its imports."""
import builtins
import os

from otbench import Solver, Solution, hookimpl, InvalidInput

builtins.COUNTER = getattr(builtins, "COUNTER", 0) + 1
if os.environ.get("LAZY_PROBE_FAIL"):
    raise ImportError("failing on purpose")


class Probe(Solver):
    """Returns a constant distance.

    Second paragraph of the docstring.
    """

    name = "NAME"
    version = "3"
    kinds = frozenset({"continuous", "discrete"})
    provides = frozenset({"distance"})
    defaults = {"value": 1.0, "widths": (20, 50), "limit": 5, "tag": None}

    def __init__(self, **params):
        super().__init__(**params)
        if self.params["limit"] > 9:
            raise InvalidInput(f"limit must be <= 9, got {self.params['limit']}")

    def solve(self, problem):
        self.check_supported(problem)
        return Solution(distance=float(self.params["value"]))


@hookimpl
def otbench_register_solvers(register):
    register(Probe)
'''


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A plugin file with a unique module name, a private cache, and only the core loaded besides it."""
    module = f"lazy_probe_{uuid.uuid4().hex[:8]}"
    counter = f"_{module}_imports"
    path = tmp_path / f"{module}.py"
    path.write_text(PLUGIN.replace("COUNTER", counter).replace('"NAME"', f'"{module}"'))
    monkeypatch.setenv("OTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OTBENCH_LOAD_PLUGINS", "closed_form")  # the core, gaussian_shift and the probe
    monkeypatch.setenv("OTBENCH_PLUGIN_MODULES", str(path))
    monkeypatch.delenv("LAZY_PROBE_FAIL", raising=False)
    monkeypatch.setattr(reg_mod, "_CACHED", None)  # the process-wide registry comes back as it was afterwards

    class Probe:
        name = module
        file = path

        @staticmethod
        def imports() -> int:
            return getattr(builtins, counter, 0)

        @staticmethod
        def forget() -> None:
            """Drop the module, as a new process would not have it."""
            sys.modules.pop(module, None)

    yield Probe
    sys.modules.pop(module, None)
    if hasattr(builtins, counter):
        delattr(builtins, counter)


def _suite(name: str, **params) -> Suite:
    return Suite.model_validate({"name": "s", "seeds": [0, 1], "tasks": [{"name": "gaussian_shift"}],
                                 "solvers": [{"name": name, "params": params}]})


def test_a_cached_plugin_is_declared_without_import_and_imported_on_first_use(probe):
    first = load_registry()
    assert probe.imports() == 1 and first.solvers[probe.name].loaded  # no record yet: imported, record written
    assert list((Path(os.environ["OTBENCH_CACHE"]) / "plugin-manifests").glob(f"{probe.name}-*.json"))
    probe.forget()
    second = load_registry()
    entry = second.solvers[probe.name]
    # a registry that imported plugins to register them would count a second import here
    assert probe.imports() == 1 and not entry.loaded and probe.name in second.loaders
    assert not second.imported(probe.name)
    info = entry.info
    # tuples and frozensets survive the JSON record (a plain json.dumps would turn them into lists)
    assert info.defaults == {"value": 1.0, "widths": (20, 50), "limit": 5, "tag": None}
    assert type(info.defaults["widths"]) is tuple and info.kinds == frozenset({"continuous", "discrete"})
    assert info.version == "3" and info.describe() == "Returns a constant distance."
    assert "Second paragraph" in entry.doc and entry.class_path == f"{probe.name}.Probe"
    lazy_plan = plan_runs(_suite(probe.name), second, "cpu")
    pickle.dumps(lazy_plan)  # run specs carry no classes
    assert probe.imports() == 1
    cls = entry.cls
    assert probe.imports() == 2 and entry.loaded and cls.__name__ == "Probe" and entry.info is cls
    assert second.imported(probe.name)
    # the declared source hash is the class's: a plan made from declarations has the keys and code hashes
    # a plan made from the classes has (a wrong declared hash would mark every finished run as stale)
    eager_plan = plan_runs(_suite(probe.name), second, "cpu")
    assert [(s.key, s.code_hash, s.solver_params) for s in lazy_plan] == \
           [(s.key, s.code_hash, s.solver_params) for s in eager_plan]


def test_a_declared_entry_uses_the_class_once_someone_imported_its_module(probe, monkeypatch):
    from otbench.registry import import_plugin_module

    load_registry()
    probe.forget()
    registry = load_registry()
    entry = registry.solvers[probe.name]
    module = import_plugin_module(str(probe.file))  # e.g. a test importing the plugin to patch it
    monkeypatch.setitem(module.Probe.defaults, "limit", 3)
    # a registry that kept answering from the declaration would still say 5
    assert entry.info is module.Probe and entry.info.defaults["limit"] == 3 and entry.loaded


def test_a_record_is_checked_by_content_hash_not_mtime(probe):
    load_registry()
    probe.forget()
    os.utime(probe.file, (1, 1))  # a checkout changes mtimes, not content: the record stays valid
    assert not load_registry().solvers[probe.name].loaded and probe.imports() == 1
    probe.file.write_text(probe.file.read_text().replace('"limit": 5', '"limit": 7'))
    probe.forget()
    fresh = load_registry()
    # an mtime-only or no check would serve the old default 5 from the stale record
    assert fresh.solvers[probe.name].info.defaults["limit"] == 7 and probe.imports() == 2


def test_garbage_records_and_a_broken_manifest_fall_back_to_importing(probe, tmp_path, monkeypatch):
    load_registry()
    for f in (Path(os.environ["OTBENCH_CACHE"]) / "plugin-manifests").glob("*.json"):
        f.write_text("{not json")
    bad_manifest = tmp_path / "manifest.json"
    bad_manifest.write_text(json.dumps({"format": 1, "plugins": {"otbench.metrics": {"format": 1, "files": 3}}}))
    monkeypatch.setattr(reg_mod, "builtin_manifest_path", lambda: bad_manifest)
    monkeypatch.setattr(reg_mod, "_BUILTIN", None)
    probe.forget()
    registry = load_registry()
    assert registry.failures == [] and registry.solvers[probe.name].loaded and probe.imports() == 2
    assert "distance_error" in registry.metrics
    monkeypatch.setattr(reg_mod, "_BUILTIN", None)


def test_an_import_failure_on_first_use_is_reported(probe, monkeypatch):
    load_registry()
    probe.forget()
    monkeypatch.setenv("LAZY_PROBE_FAIL", "1")  # the files are unchanged: the record stays valid
    registry = load_registry()
    entry = registry.solvers[probe.name]
    assert registry.failures == [] and not entry.loaded
    validate_suite(_suite(probe.name), registry, "s.yaml", construct=False)  # declarations only: fine
    with pytest.raises(SuiteError, match="cannot be loaded.*failing on purpose"):
        validate_suite(_suite(probe.name), registry, "s.yaml")  # what `run` does
    assert [f.plugin for f in registry.failures] == [str(probe.file)]
    assert "failing on purpose" in registry.failures[0].error
    with pytest.raises(PluginImportError, match="failing on purpose"):
        entry.cls
    assert len(registry.failures) == 1  # reported once, however often the class is asked for


def test_validate_constructs_only_when_asked(probe):
    load_registry()
    probe.forget()
    registry = load_registry()
    suite = _suite(probe.name, limit=12)  # passes the declared rules (an int >= 0), fails the plugin's __init__
    validate_suite(suite, registry, "s.yaml", construct=False)
    assert not registry.solvers[probe.name].loaded
    with pytest.raises(SuiteError, match="rejects parameters.*limit must be <= 9"):
        validate_suite(suite, registry, "s.yaml", construct=True)
    with pytest.raises(SuiteError, match="limit.*expected an integer"):  # declared rules still apply lazily
        validate_suite(_suite(probe.name, limit="x"), load_registry(), "s.yaml", construct=False)


def test_validate_command_checks_declarations_and_deep_constructs(probe, tmp_path):
    from typer.testing import CliRunner

    from otbench.cli import app

    load_registry()
    probe.forget()
    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: s\ntasks: [{{name: gaussian_shift}}]\nsolvers: [{{name: {probe.name}, params: {{limit: 12}}}}]\n")
    quick = CliRunner().invoke(app, ["validate", str(suite)], catch_exceptions=False)
    assert quick.exit_code == 0 and "valid; 1 runs on cpu" in quick.output and "--deep" in quick.output
    assert probe.imports() == 1  # the plugin was not imported
    deep = CliRunner().invoke(app, ["validate", str(suite), "--deep"], catch_exceptions=False)
    # without --deep wired to construct=True this would pass like the quick check
    assert deep.exit_code == 2 and "limit must be <= 9" in deep.output


def test_a_stale_declaration_warns_once_and_the_class_wins(probe):
    load_registry()
    (record_file,) = (Path(os.environ["OTBENCH_CACHE"]) / "plugin-manifests").glob(f"{probe.name}-*.json")
    record = json.loads(record_file.read_text())
    record["components"][0]["defaults"]["value"] = 99.0  # the hashes still match: only the declaration lies
    record_file.write_text(json.dumps(record))
    probe.forget()
    registry = load_registry()
    entry = registry.solvers[probe.name]
    assert entry.info.defaults["value"] == 99.0
    with pytest.warns(StaleDeclarationWarning, match=probe.name):
        entry.cls
    assert entry.info.defaults["value"] == 1.0  # without the check the stale 99.0 would stay in force
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entry.cls  # no second warning
    # the user cache was rewritten from the classes
    assert json.loads(record_file.read_text())["components"][0]["defaults"]["value"] == 1.0


def test_encoding_keeps_python_types_and_refuses_what_json_cannot_hold():
    value = {"a": (1, 2.5, None), "b": frozenset({"x", "y"}), "c": [True, {"d": (math.inf,)}], "e": {3, 4}}
    back = _decode(json.loads(json.dumps(_encode(value))))
    # json alone would return lists for the tuple and fail on the sets
    assert back == value and type(back["a"]) is tuple and type(back["b"]) is frozenset and type(back["e"]) is set
    for bad in (object(), {1: "int key"}, {"__tuple__": 1}):
        with pytest.raises(_NotDeclarable):
            _encode(bad)


def test_declarations_answer_like_the_classes_for_every_builtin():
    """What list/show/validate read from a declaration equals the class attribute, type and order included
    (a record written with sorted keys would reorder `show`'s parameters; lists for tuples would change the
    parameters a run gets)."""
    from otbench.registry import Declaration, component_meta
    from otbench.suite import param_rules

    registry = load_registry(lazy=False)
    entries = [*registry.solvers.values(), *registry.tasks.values(), *registry.metrics.values()]
    assert len(entries) > 50
    for entry in entries:
        cls = entry.cls
        meta = component_meta(cls)
        declared = Declaration(_decode(json.loads(json.dumps(_encode(meta)))))
        for key in meta:
            if key in ("doc", "description", "module", "qualname", "category", "source_hash"):
                continue
            ours, theirs = getattr(declared, key), getattr(cls, key, None)
            if key == "param_schema":
                theirs = {k: dict(v) for k, v in dict(theirs or {}).items()}
            assert ours == theirs, (cls, key)
            if key not in ("param_schema", "defaults", "outputs", "provides_by_kind"):  # mappings: any Mapping
                assert type(ours) is type(theirs), (cls, key)
        assert list(declared.defaults) == list(cls.defaults) if hasattr(cls, "defaults") else True
        assert all(type(v) is type(cls.defaults[k]) for k, v in getattr(declared, "defaults", {}).items())
        assert declared.describe() == cls.describe()
        if hasattr(cls, "defaults"):
            assert param_rules(declared) == param_rules(cls)


def test_committed_manifest_is_current():
    """Like a lockfile check: fails when a built-in plugin changed and the manifest was not regenerated."""
    path = builtin_manifest_path()
    assert path is not None and path.is_file(), "otbench_plugins/_manifest.json is missing"
    committed = json.loads(path.read_text())
    current = builtin_manifest()
    stale = sorted(set(committed["plugins"]) ^ set(current["plugins"])) + sorted(
        name for name in set(committed["plugins"]) & set(current["plugins"])
        if committed["plugins"][name] != current["plugins"][name])
    assert not stale, (f"the built-in declaration manifest is stale for {stale}: run "
                       "`otbench plugins --write-manifest` (or `python -m otbench.registry`) and commit it")
    assert committed == current


def test_the_command_line_lists_without_importing_torch(tmp_path):
    """`otbench list` and `validate` read declarations: torch stays unimported (a registry that imports the
    plugins, all of which import torch, fails this)."""
    code = ("import sys\nfrom otbench.cli import app\n"
            "for args in (['list'], ['plugins'], ['validate', 'suites/smoke.yaml'], ['show', 'sinkhorn'],\n"
            "             ['show', 'w1_bounds'], ['show', 'gaussian_shift']):\n"
            "    try:\n        app(args)\n    except SystemExit as e:\n        assert not e.code, (args, e.code)\n"
            "print('TORCH', 'torch' in sys.modules)\n")
    env = {**os.environ, "OTBENCH_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    env.pop("OTBENCH_LOAD_PLUGINS", None)
    env.pop("OTBENCH_PLUGIN_MODULES", None)
    root = Path(__file__).resolve().parent.parent
    first = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    # the first call imports what has no record yet (a third-party plugin) and caches it; the next imports none
    second = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr
    assert "TORCH False" in second.stdout, second.stdout[-2000:]
    assert "exact_lp" in second.stdout and "valid; 12 runs on cpu" in second.stdout
    assert "max_iter = 1000" in second.stdout
