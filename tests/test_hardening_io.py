"""Corrupt result files, unusable results folders and reports (issue 13, items 1, 9, 10, 11, 12).

Everything here runs in-process (the CLI through typer's CliRunner), so the whole file takes seconds. Faults of
the file system are injected by wrapping ``os.open`` / ``os.write`` in ``otbench.store``: chmod cannot make a
file read-only for root, and CI may run as root.
"""

from __future__ import annotations

import errno
import json
import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import write_suite
from otbench.cli import EXIT_INVALID, EXIT_IO, app
from otbench.report import leaderboard, write_report
from otbench.store import ResultStore

SUITE = """name: io
seeds: [0]
timeout: 60
metrics: [distance_error]
tasks: [{name: gaussian_shift, params: {dim: 2}}]
solvers: [{name: exact_lp, params: {n_samples: 32}}]
"""


def _cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def _rec(key, solver="s", seed=0, value=1.0, status="ok", **extra):
    return {"key": key, "suite": "x", "task": "t", "task_label": "t", "task_params": {"dim": 2}, "solver": solver,
            "solver_label": solver, "solver_params": {}, "seed": seed, "status": status,
            "primary_metric": ["err", "min"], "metrics": {"err": value} if status == "ok" else {}, **extra}


@pytest.fixture
def computed(monkeypatch):
    """Counts runs actually computed: a store check that came after the first run would show here."""
    import otbench.executors as executors

    calls = []
    real = executors.execute_run

    def counting(spec, *a, **kw):
        calls.append(spec.key)
        return real(spec, *a, **kw)

    monkeypatch.setattr(executors, "execute_run", counting)
    return calls


# -- item 1: requested metric names never crash the report ---------------------------------------------------

def test_failed_and_skipped_runs_with_metrics_listed_give_a_leaderboard(fault_registry, tmp_path):
    suite = write_suite(tmp_path / "s.yaml", SUITE.replace(
        "solvers: [{name: exact_lp, params: {n_samples: 32}}]",
        "solvers: [{name: fault_raises}, {name: exact_lp, params: {n_samples: 32}}]"))
    res = _cli("run", str(suite), "--results-dir", str(tmp_path / "r"))
    assert res.exit_code == 0, res.output  # was: AttributeError 'list' object has no attribute 'items', exit 1
    board = pd.read_csv(tmp_path / "r" / "leaderboard.csv")
    assert set(board.solver_label) == {"fault_raises", "exact_lp"}
    rec = next(r for r in ResultStore(tmp_path / "r").records() if r["solver"] == "fault_raises")
    assert rec["metrics"] == {} and rec["requested_metrics"] == ["distance_error"]


def test_records_of_the_old_format_with_a_metric_name_list_still_report(tmp_path):
    store = ResultStore(tmp_path)
    store.append(_rec("a", status="skipped", reason="not supported", metrics=["distance_error"]))
    store.append(_rec("b", value=2.0))
    _, md, board = write_report(tmp_path)  # a reader that trusted `metrics` to be a mapping crashed here
    assert len(board) == 1 and "not supported" in md.read_text()


# -- item 9: corrupt records are skipped, counted and located ------------------------------------------------

def test_wrong_shape_and_garbage_lines_are_skipped_and_reported(tmp_path):
    store = ResultStore(tmp_path)
    store.append(_rec("good", value=1.0))
    with open(store.path, "a") as fh:
        fh.write(json.dumps({**_rec("x"), "key": ["not", "a", "string"]}) + "\n")
        fh.write(json.dumps({**_rec("y"), "metrics": "0.5"}) + "\n")
        fh.write("\x00\x00garbage\n")
        fh.write('{"key": "torn", "status": "o\n')
    store.append(_rec("good2", seed=1, value=3.0))
    keys = [r["key"] for r in store.records()]
    assert keys == ["good", "good2"]
    assert store.problems.unreadable == [4, 5]
    assert [n for n, _ in store.problems.wrong_shape] == [2, 3]
    notes: list[str] = []
    _, md, board = write_report(tmp_path, notes=notes)
    assert board.iloc[0]["err_mean"] == 2.0 and board.iloc[0]["n_seeds"] == 2
    assert "skipped 2 line(s) that are not JSON records (torn or garbage) at line(s) 4, 5" in notes[0]
    assert "2 record(s) of the wrong shape at line(s) 2, 3 (line 2: 'key' must be a non-empty string" in notes[0]
    assert "line(s) 4, 5" in md.read_text()
    res = _cli("report", str(tmp_path))
    assert res.exit_code == 0 and "warning:" in res.output and "wrong shape" in res.output


def test_a_nan_metric_is_not_hidden_inside_n_seeds():
    recs = [_rec("1", seed=0, value=1.0), _rec("2", seed=1, value=None), _rec("3", seed=2, value=3.0)]
    notes: list[str] = []
    board = leaderboard(recs, notes)
    row = board.iloc[0]
    # n_ok counts the three successful runs, n_seeds the two finite values of the primary metric (issue 12); the
    # mean is over the two that have a value, and says so
    assert row.n_ok == 3 and row.n_seeds == 2 and row.err_mean == 2.0 and row.err_n == 2
    assert any("missing (NaN) on some successful seeds" in n for n in notes)


# -- item 11: two code versions are never averaged -----------------------------------------------------------

def test_records_of_two_code_versions_stay_in_separate_rows():
    old = [_rec(f"o{s}", seed=s, value=10.0, code_version='["0.1.0","1"]') for s in range(2)]
    new = [_rec(f"n{s}", seed=s, value=1.0, code_version='["0.1.0","2"]') for s in range(2)]
    notes: list[str] = []
    board = leaderboard(old + new, notes)
    assert len(board) == 2 and sorted(board.err_mean) == [1.0, 10.0] and set(board.n_seeds) == {2}
    assert all("code=" in c for c in board.solver_config)
    assert any("2 code versions" in n and "separate rows" in n for n in notes)


def test_signed_error_shows_the_direction_of_a_bias():
    recs = [{**_rec(str(s), seed=s), "metrics": {"distance": 1.8, "true_distance": 2.0, "err": 0.1}} for s in range(2)]
    row = leaderboard(recs).iloc[0]
    assert row.distance_bias_mean == pytest.approx(-0.2) and row.distance_rel_bias_mean == pytest.approx(-0.1)


# -- item 10: unusable results folders: a clean message, exit 3, no run computed -----------------------------

def test_records_file_that_is_a_folder(tmp_path, computed):
    suite = write_suite(tmp_path / "s.yaml", SUITE)
    (tmp_path / "r" / "records.jsonl").mkdir(parents=True)
    res = _cli("run", str(suite), "--results-dir", str(tmp_path / "r"))
    assert res.exit_code == EXIT_IO and "records.jsonl is not a regular file" in res.output
    assert "no run was computed" in res.output and computed == []
    rep = _cli("report", str(tmp_path / "r"))
    assert rep.exit_code == EXIT_IO and "is not a regular file" in rep.output


def test_results_path_under_a_file(tmp_path, computed):
    suite = write_suite(tmp_path / "s.yaml", SUITE)
    (tmp_path / "afile").write_text("x")
    res = _cli("run", str(suite), "--results-dir", str(tmp_path / "afile" / "r"))
    assert res.exit_code == EXIT_IO and "afile is a file, not a folder" in res.output and computed == []


def _deny(monkeypatch, match: str, err: int) -> None:
    import otbench.store as store_mod

    real_open = os.open

    def fake_open(path, flags, *args):
        if match in str(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(err, os.strerror(err), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(store_mod.os, "open", fake_open)


def test_read_only_records_file_is_found_before_computing(tmp_path, monkeypatch, computed):
    suite = write_suite(tmp_path / "s.yaml", SUITE)
    _deny(monkeypatch, "records.jsonl", errno.EACCES)
    res = _cli("run", str(suite), "--results-dir", str(tmp_path / "r"))
    # was: the run was computed, then its record thrown away with a traceback
    assert res.exit_code == EXIT_IO and "records.jsonl: permission denied (read-only)" in res.output
    assert computed == [] and "Traceback" not in res.output


def test_read_only_results_folder(tmp_path, monkeypatch, computed):
    suite = write_suite(tmp_path / "s.yaml", SUITE)
    (tmp_path / "r").mkdir()
    _deny(monkeypatch, str(tmp_path / "r"), errno.EROFS)
    res = _cli("run", str(suite), "--results-dir", str(tmp_path / "r"))
    assert res.exit_code == EXIT_IO and "read-only file system" in res.output and computed == []


def test_full_disk_mid_suite_keeps_what_was_written(tmp_path, monkeypatch):
    import otbench.store as store_mod

    suite = write_suite(tmp_path / "s.yaml", SUITE.replace("seeds: [0]", "seeds: [0, 1, 2]"))
    real_write, writes = os.write, []

    def filling(fd, data):
        if b'"status": "ok"' in data:
            writes.append(1)
            if len(writes) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(store_mod.os, "write", filling)
    res = _cli("run", str(suite), "--results-dir", str(tmp_path / "r"))
    assert res.exit_code == EXIT_IO and "no space left on the device" in res.output
    assert "the 1 run(s) recorded before this in this session are saved" in res.output
    monkeypatch.undo()
    assert len(list(ResultStore(tmp_path / "r").records())) == 1  # the record written before is intact


def test_report_that_cannot_be_written_says_where_to_write_it(tmp_path):
    ResultStore(tmp_path).append(_rec("a"))
    (tmp_path / "leaderboard.csv").mkdir()
    res = _cli("report", str(tmp_path))
    assert res.exit_code == EXIT_IO and "pass --out DIR" in res.output
    assert _cli("report", str(tmp_path), "--out", str(tmp_path / "elsewhere")).exit_code == 0


# -- item 12: messages -----------------------------------------------------------------------------------

def test_error_lines_carry_no_literal_markup(tmp_path):
    bad = write_suite(tmp_path / "b.yaml", "name: b\ntasks: [{name: gaussian_shift}]\nsolvers: [{name: exact_lpp}]\n")
    res = _cli("validate", str(bad))
    assert res.exit_code == EXIT_INVALID and res.output.startswith("error: ") and "[red]" not in res.output
    assert "[/]" not in res.output


def test_an_allocation_failure_is_labelled_out_of_memory(tmp_path):
    import dataclasses

    from otbench.api import Solver
    from otbench.registry import load_registry
    from otbench.runner import execute_run
    from otbench.suite import load_suite, plan_runs

    class Greedy(Solver):
        name = "greedy_for_test"

        def solve(self, problem):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 800000000000 bytes")

    reg = load_registry()
    path = write_suite(tmp_path / "s.yaml", SUITE)
    spec = plan_runs(load_suite(path), reg, "cpu")[0]
    reg.solvers["greedy_for_test"] = dataclasses.replace(reg.solvers["exact_lp"], cls=Greedy)
    rec = execute_run(dataclasses.replace(spec, solver="greedy_for_test", solver_params={}), reg)
    assert rec["status"] == "failed" and rec["error"].startswith("out of memory: RuntimeError")


def test_pairs_file_placeholders_are_not_evaluated(tmp_path):
    import torch

    from otbench.api import InvalidInput
    from otbench_plugins.w1.known_plans import MinFunnelPair as MinFunnelTask

    task = MinFunnelTask(dim=2, funnels=2, pairs_file=str(tmp_path / "{dim.__class__}_{funnels}.pt"))
    with pytest.raises(InvalidInput) as err:
        task.build(0, torch.device("cpu"), torch.float64)
    # str.format would have looked the attribute up and named "<class 'int'>_2.pt"
    assert "{dim.__class__}_2.pt" in str(err.value)


def test_color_transfer_refuses_images_outside_the_wheel():
    import torch

    from otbench.api import InvalidInput
    from otbench_plugins.discrete.tasks import ColorTransfer

    with pytest.raises(InvalidInput, match="must be one of"):
        ColorTransfer(source="download_all").build(0, torch.device("cpu"), torch.float64)


# -- summary.md and the terminal table --------------------------------------------------------------------

def test_summary_gives_reasons_configs_and_whole_names(tmp_path):
    long_label = "a_solver_label_that_is_much_longer_than_eighty_columns_" + "x" * 40
    store = ResultStore(tmp_path)
    store.append({**_rec("1", solver="lp", value=1.0), "solver": "exact_lp", "solver_label": "lp_small",
                  "solver_params": {"n_samples": 64}})
    store.append({**_rec("2", solver="lp", value=2.0), "solver": "exact_lp", "solver_label": long_label,
                  "solver_params": {"n_samples": 256}})
    store.append(_rec("3", solver="discrete_only", status="skipped", reason="solves ['discrete'] problems only"))
    _, md, board = write_report(tmp_path)
    text = md.read_text()
    # before: an all-NaN row with no reason, and solver_config always empty
    assert "skipped: solves ['discrete'] problems only" in text and "## Skipped" in text
    assert set(board.solver_config) >= {"n_samples=64", "n_samples=256"}
    res = _cli("report", str(tmp_path))
    assert long_label in res.output  # a table cut at 80 columns showed "a_solver_label_that_is_mu…"


def test_records_older_than_source_hashes_are_not_split_from_new_ones():
    old = [_rec(f"o{s}", seed=s, value=1.0, code_version='["0.1.0","1"]') for s in range(2)]
    new = [_rec("n2", seed=2, value=4.0, code_version='["0.1.0","1"]', code_hash="task:aa solver:bb")]
    notes: list[str] = []
    board = leaderboard(old + new, notes)
    # adding a seed after upgrading otbench must not split a row (a wrong grouping would show 2 rows)
    assert len(board) == 1 and board.iloc[0].n_seeds == 3 and board.iloc[0].err_mean == 2.0 and not notes
