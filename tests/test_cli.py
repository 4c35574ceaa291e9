"""The command line end to end: smoke suite, resume, validate, list, plugins, report."""

from __future__ import annotations

import json

import pandas as pd

from conftest import otbench_cli, write_suite


def test_smoke_suite_runs_and_second_run_runs_nothing(tmp_path):
    out = tmp_path / "smoke"
    first = otbench_cli("run", "suites/smoke.yaml", "--results-dir", str(out), "--strict", check=True)
    assert "0 already done" in first.stderr
    board = pd.read_csv(out / "leaderboard.csv")
    assert set(board.solver_label) == {"lp_256", "lp_1024"} and (board.n_failed == 0).all()
    # exact LP on samples is unbiased in 2-D: within 10 % of W1 = |m| = 2
    low_dim = board[(board.task_label == "gauss_w1") & (board.task_config == "dim=2")]
    assert (low_dim.distance_rel_error_mean < 0.1).all()
    assert (board["rank"].dropna() >= 1).all() and "summary" in first.stderr
    n_records = len((out / "records.jsonl").read_text().splitlines())
    second = otbench_cli("run", "suites/smoke.yaml", "--results-dir", str(out), check=True)
    assert f"{n_records} already done, 0 to run" in second.stderr
    assert len((out / "records.jsonl").read_text().splitlines()) == n_records


def test_jobs_two_gives_the_same_numbers(tmp_path):
    suite = write_suite(tmp_path / "s.yaml", """
name: pool
seeds: [0, 1]
tasks: [{name: gaussian_shift, params: {dim: 3}}]
solvers: [{name: exact_lp, params: {n_samples: 128}}]
""")
    otbench_cli("run", str(suite), "--results-dir", str(tmp_path / "a"), check=True)
    otbench_cli("run", str(suite), "--results-dir", str(tmp_path / "b"), "--jobs", "2", check=True)
    dist = {d: sorted(json.loads(x)["metrics"]["distance"] for x in (tmp_path / d / "records.jsonl").read_text().splitlines())
            for d in ("a", "b")}
    assert dist["a"] == dist["b"]


def test_validate_good_and_bad(tmp_path):
    good = otbench_cli("validate", "suites/smoke.yaml", check=True)
    assert "valid" in good.stdout and "runs on cpu" in good.stdout
    bad = write_suite(tmp_path / "bad.yaml", "name: b\ntasks: [{name: gaussian_shift}]\nsolvers: [{name: exact_lpp}]\n")
    res = otbench_cli("validate", str(bad))
    assert res.returncode == 2
    assert str(bad) in res.stderr and "solvers[0].name" in res.stderr and "did you mean 'exact_lp'" in res.stderr
    run = otbench_cli("run", str(bad), "--results-dir", str(tmp_path / "r"))
    assert run.returncode == 2 and not (tmp_path / "r").exists()


def test_list_and_plugins_show_origins():
    listing = otbench_cli("list", check=True).stdout
    assert "exact_lp" in listing and "gaussian_shift" in listing and "distance_error" in listing
    broken = otbench_cli("plugins", env={"OTBENCH_PLUGIN_MODULES": "broken_plugin"})
    assert broken.returncode == 0 and "broken_plugin" in broken.stdout and "FAILED" in broken.stdout


def test_report_rebuilds_from_records(tmp_path):
    out = tmp_path / "r"
    suite = write_suite(tmp_path / "s.yaml", "name: r\ntasks: [{name: gaussian_shift}]\n"
                        "solvers: [{name: exact_lp, params: {n_samples: 64}}]\n")
    otbench_cli("run", str(suite), "--results-dir", str(out), check=True)
    (out / "leaderboard.csv").unlink()
    otbench_cli("report", str(out), check=True)
    assert (out / "leaderboard.csv").exists() and "exact_lp" in (out / "summary.md").read_text()
    missing = otbench_cli("report", str(tmp_path / "nothing"))
    assert missing.returncode == 2
    # after a parameter change, --suite keeps only the runs the suite plans now
    changed = write_suite(tmp_path / "s2.yaml", suite.read_text().replace("n_samples: 64", "n_samples: 32"))
    otbench_cli("run", str(changed), "--results-dir", str(out), check=True)
    otbench_cli("report", str(out), "--suite", str(changed), "--out", str(tmp_path / "ref"), check=True)
    board = pd.read_csv(tmp_path / "ref" / "leaderboard.csv")
    assert list(board.solver_params) == ['{"max_iter": null, "n_samples": 32}']
    assert len(pd.read_csv(out / "leaderboard.csv")) == 2  # the full report still shows both
