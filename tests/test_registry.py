"""Plugin discovery: entry points, the load filter, failure isolation, duplicate names."""

from __future__ import annotations

import types

import pytest

from otbench import Solver, hookimpl
from otbench.registry import load_registry


def test_builtins_come_through_entry_points():
    reg = load_registry()
    assert reg.solvers["exact_lp"].plugin == "exact_lp"
    assert reg.solvers["exact_lp"].distribution == "otbench"
    assert reg.tasks["gaussian_shift"].plugin == "closed_form"
    assert reg.metrics["distance_error"].plugin == "otbench.metrics"


def test_load_filter_env_var(monkeypatch):
    monkeypatch.setenv("OTBENCH_LOAD_PLUGINS", "exact_lp")
    reg = load_registry()
    assert set(reg.solvers) == {"exact_lp"} and reg.tasks == {}
    monkeypatch.setenv("OTBENCH_LOAD_PLUGINS", "")
    reg = load_registry()
    assert reg.solvers == {} and "distance_error" in reg.metrics  # the core's metrics always load


def test_plugin_that_raises_at_import_is_reported_and_others_load(monkeypatch):
    monkeypatch.setenv("OTBENCH_PLUGIN_MODULES", "broken_plugin,fault_plugins")
    reg = load_registry()
    failure = next(f for f in reg.failures if f.plugin == "broken_plugin")
    assert "ImportError" in failure.error and "on purpose" in failure.error
    assert "fault_raises" in reg.solvers and "exact_lp" in reg.solvers


def test_hook_that_raises_and_duplicate_names_are_reported():
    class Dup(Solver):
        name = "exact_lp"

    @hookimpl
    def otbench_register_solvers(register):
        register(Dup)

    dup = types.ModuleType("dup_plugin")
    dup.otbench_register_solvers = otbench_register_solvers

    @hookimpl
    def otbench_register_tasks(register):
        raise RuntimeError("task hook broke")

    bad = types.ModuleType("bad_hook")
    bad.otbench_register_tasks = otbench_register_tasks
    reg = load_registry(extra_plugins=[dup, bad])
    messages = {f.plugin: f.error for f in reg.failures}
    assert "already registered" in messages["dup_plugin"]
    assert "task hook broke" in messages["bad_hook"]
    assert reg.solvers["exact_lp"].plugin == "exact_lp"  # the first registration is kept


def test_unknown_hook_is_rejected():
    @hookimpl
    def otbench_register_solverz(register):
        pass

    typo = types.ModuleType("typo_plugin")
    typo.otbench_register_solverz = otbench_register_solverz
    with pytest.raises(Exception, match="solverz"):
        load_registry(extra_plugins=[typo])  # check_pending catches misspelled hooks


def test_unknown_lookup_suggests():
    reg = load_registry()
    with pytest.raises(KeyError, match="did you mean 'exact_lp'"):
        reg.solver("exactlp")
