"""The record store survives torn writes; leaderboards aggregate over seeds and rank correctly."""

from __future__ import annotations

import math

import pandas as pd

from otbench.report import leaderboard, write_report
from otbench.store import ResultStore


def _rec(key, solver, seed, value, status="ok", task_params=None):
    return {"key": key, "suite": "s", "task": "t", "task_label": "t", "task_params": task_params or {"dim": 2},
            "solver": solver, "solver_label": solver, "solver_params": {}, "seed": seed, "status": status,
            "primary_metric": ["err", "min"], "seconds": 1.0 + seed, "metrics": {"err": value} if status == "ok" else {},
            "error": None if status == "ok" else "boom"}


def test_torn_trailing_line_is_ignored(tmp_path):
    store = ResultStore(tmp_path)
    store.append(_rec("a", "x", 0, 1.0))
    with open(store.path, "ab") as fh:
        fh.write(b'{"key": "b", "status": "o')  # a write cut short by a kill
    assert [r["key"] for r in store.records()] == ["a"]
    store.append(_rec("c", "x", 1, 2.0))  # the next record starts on a fresh line and stays readable
    store.append(_rec("d", "x", 2, 2.0))
    assert [r["key"] for r in store.records()] == ["a", "c", "d"]


def test_nan_and_inf_are_stored_as_valid_json(tmp_path):
    store = ResultStore(tmp_path)
    store.append({**_rec("a", "x", 0, 1.0), "metrics": {"err": float("nan"), "big": float("inf")}})
    rec = next(store.records())
    assert rec["metrics"] == {"err": None, "big": "inf"}


def test_failed_runs_are_not_done(tmp_path):
    store = ResultStore(tmp_path)
    store.append(_rec("a", "x", 0, 0.0, status="failed"))
    store.append(_rec("b", "x", 0, 0.0, status="skipped"))
    assert store.done_keys() == {"b"}
    store.append(_rec("a", "x", 0, 1.0))
    assert store.done_keys() == {"a", "b"}


def test_leaderboard_means_stds_counts_and_rank():
    records = [_rec("1", "good", 0, 1.0), _rec("2", "good", 1, 3.0), _rec("3", "bad", 0, 10.0),
               _rec("4", "bad", 1, 0.0, status="failed"), _rec("5", "other", 0, 5.0, task_params={"dim": 4})]
    board = leaderboard(records)
    good = board[board.solver_label == "good"].iloc[0]
    bad = board[board.solver_label == "bad"].iloc[0]
    assert good.err_mean == 2.0 and math.isclose(good.err_std, math.sqrt(2.0))
    assert good.n_seeds == 2 and good.n_failed == 0 and good["rank"] == 1
    assert bad.n_seeds == 1 and bad.n_failed == 1 and bad["rank"] == 2 and bad.first_error == "boom"
    other = board[board.solver_label == "other"].iloc[0]
    assert other["rank"] == 1 and other.task_config == "dim=4"  # ranked within its own task configuration


def test_max_direction_ranks_descending():
    recs = [{**_rec(str(i), s, 0, v), "primary_metric": ["acc", "max"], "metrics": {"acc": v}}
            for i, (s, v) in enumerate([("a", 0.5), ("b", 0.9)])]
    board = leaderboard(recs)
    assert board.set_index("solver_label").loc["b", "rank"] == 1


def test_report_on_partial_store(tmp_path):
    store = ResultStore(tmp_path)
    store.append(_rec("1", "good", 0, 1.0))
    csv_path, md_path, board = write_report(tmp_path)
    assert len(pd.read_csv(csv_path)) == 1
    assert "good" in md_path.read_text()
