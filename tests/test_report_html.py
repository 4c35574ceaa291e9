"""Issue 12 reporting: intervals over seeds, the tie-aware rank, published values beside ours, pivot tables, and
the offline HTML page as a person sees it in headless Chromium."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from otbench.report import (HTML_FILE, format_interval, grid_axes, interval, leaderboard, pivot_tables,
                            significantly_better, write_report)
from otbench.store import ResultStore

PUB = {"source": "Paper 2022, Table 2", "method": "WGAN-GP"}


def _rec(solver: str, seed: int, value: float | None, task_params: dict | None = None, label: str = "fun",
         primary: tuple[str, str] = ("err", "min"), published: dict | None = None, trace: list | None = None,
         seconds: float = 1.0, extra: dict | None = None) -> dict:
    task_params = task_params if task_params is not None else {"dim": 2}
    metrics = {} if value is None else {primary[0]: value}
    metrics.update(extra or {})
    rec = {"key": f"{label}-{solver}-{seed}-{json.dumps(task_params, sort_keys=True)}", "suite": "s", "task": label,
           "task_label": label, "task_params": task_params, "solver": solver, "solver_label": solver,
           "solver_params": {}, "seed": seed, "status": "ok", "primary_metric": list(primary), "seconds": seconds,
           "metrics": metrics, "trace": trace or [],
           "env": {"device": "cpu", "python": "3.11.7", "torch": "2.14.1", "hostname": "testhost"}}
    if published is not None:
        rec["published"] = published
    return rec


def _row(board: pd.DataFrame, solver: str, **params) -> pd.Series:
    rows = board[board.solver_label == solver]
    for k, v in params.items():
        rows = rows[[json.loads(p).get(k) == v for p in rows.task_params]]
    assert len(rows) == 1
    return rows.iloc[0]


# -- intervals -----------------------------------------------------------------------------------------------

def test_student_t_interval_known_values():
    # Wrong implementations caught: a normal quantile (1.96 -> half 1.13), the population std (ddof 0 -> 2.03),
    # or t with n instead of n - 1 degrees of freedom (3.18 -> 1.84).
    iv = interval([1.0, 2.0, 3.0])
    assert iv.n == 3 and iv.mean == 2.0 and iv.std == 1.0
    assert iv.half == pytest.approx(4.302652729911275 / math.sqrt(3), rel=1e-9)  # t(0.975, 2) = 4.3027
    assert (iv.low, iv.high) == pytest.approx((2 - 2.4841377, 2 + 2.4841377), rel=1e-6)
    one = interval([5.0])  # one seed: a mean but no interval (not a zero-width one)
    assert one.n == 1 and one.mean == 5.0 and math.isnan(one.half)
    # NaN, infinities and non-numbers are not seed values
    assert interval([1.0, float("nan"), float("inf"), None, "x", 3.0]).n == 2


def test_n_seeds_counts_finite_primary_values_and_the_csv_has_intervals():
    # Wrong implementation caught: n_seeds counting successful runs (3) although one has no finite value.
    recs = [_rec("a", 0, 1.0), _rec("a", 1, 2.0), _rec("a", 2, None, extra={"other": 1.0}),
            {**_rec("a", 3, 9.0), "status": "failed", "error": "boom"}]
    row = leaderboard(recs).iloc[0]
    assert row.n_seeds == 2 and row.n_ok == 3 and row.n_failed == 1
    assert row.err_mean == 1.5 and row.err_ci95 == pytest.approx(stats.t.ppf(0.975, 1) * math.sqrt(0.5) / math.sqrt(2))


# -- ranks ---------------------------------------------------------------------------------------------------

def test_welch_rule_matches_scipy():
    # Wrong implementations caught: a pooled-variance (Student) test, a one-sided test at 5 %, or the direction
    # ignored. Compare with scipy's Welch test over many random pairs of samples.
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.normal(0, rng.uniform(0.1, 2), size=rng.integers(2, 6))
        b = rng.normal(rng.uniform(-2, 2), rng.uniform(0.1, 2), size=rng.integers(2, 6))
        p = stats.ttest_ind(a, b, equal_var=False).pvalue
        assert significantly_better(a, b, "min") == (a.mean() < b.mean() and p < 0.05)
        assert significantly_better(a, b, "max") == (a.mean() > b.mean() and p < 0.05)


def test_rank_ties_solvers_that_are_not_significantly_different():
    # a and b overlap (not significantly different): both rank 1; c is clearly worse than both: rank 3;
    # d has one seed: no test possible, its mean decides (worse than a, b and c): rank 4.
    # Wrong implementations caught: ranking by mean only (a 1, b 2), counting worse rows, or a tie with c.
    vals = {"a": [1.0, 1.2, 0.9], "b": [1.1, 1.0, 1.3], "c": [5.0, 5.1, 4.9], "d": [9.0]}
    recs = [_rec(s, i, v) for s, vs in vals.items() for i, v in enumerate(vs)]
    board = leaderboard(recs).set_index("solver_label")
    assert board["rank"].to_dict() == {"a": 1, "b": 1, "c": 3, "d": 4}
    assert board["mean_rank"].to_dict() == {"a": 1, "b": 2, "c": 3, "d": 4}
    assert board.loc["c", "beaten_by"] == "a, b" and board.loc["a", "beaten_by"] == ""
    assert list(board.index) == ["a", "b", "c", "d"]  # listed by rank, then mean
    # maximising flips it: d (one seed) is best by its mean, c beats a and b significantly
    board = leaderboard([{**r, "primary_metric": ["err", "max"]} for r in recs]).set_index("solver_label")
    assert board["rank"].to_dict() == {"d": 1, "c": 2, "a": 3, "b": 3}


# -- published values ----------------------------------------------------------------------------------------

def test_published_values_beside_ours_and_never_ranked(tmp_path):
    # ours: gp at dim 2 has err [1, 2, 3] (interval 2 +- 2.48); published 4.0 is inside, at dim 4 [1, 1.1, 0.9]
    # published 0.5 is outside; lp has one seed: no interval, so "inside" is unknown (empty), not False.
    recs = [_rec("gp", s, v, published={**PUB, "metrics": {"err": 4.0, "cos": 0.9}}) for s, v in enumerate([1, 2, 3])]
    recs += [_rec("gp", s, v, {"dim": 4}, published={**PUB, "metrics": {"err": 0.5}})
             for s, v in enumerate([1.0, 1.1, 0.9])]
    recs += [_rec("lp", 0, 3.0, published={**PUB, "method": "LP", "metrics": {"err": 0.01}})]
    recs += [_rec("lp", 0, 3.0, {"dim": 4})]
    board = leaderboard(recs)
    gp2, gp4, lp2 = _row(board, "gp", dim=2), _row(board, "gp", dim=4), _row(board, "lp", dim=2)
    assert gp2.err_published == 4.0 and bool(gp2.err_published_inside) is True
    assert gp4.err_published == 0.5 and bool(gp4.err_published_inside) is False
    assert lp2.err_published == 0.01 and pd.isna(lp2.err_published_inside)
    assert gp2.cos_published == 0.9 and pd.isna(gp2.cos_published_inside)  # we have no cos: unknown
    assert gp2.published_source == PUB["source"] and lp2.published_method == "LP"
    # a published value never enters the ranking: lp's published 0.01 would be best, lp ranks by its own 3.0
    assert len(board) == 4 and lp2["mean_rank"] == 2
    assert format_interval(gp4, "err") == "1 ± 0.25 (pub. 0.5 ✗)"
    assert format_interval(gp2, "err") == "2 ± 2.5 (pub. 4 ✓)"
    assert format_interval(lp2, "err") == "3 (1 seed) (pub. 0.01)"
    store = ResultStore(tmp_path)
    for r in recs:
        store.append(r)
    csv_path, md_path, _ = write_report(tmp_path)
    csv = pd.read_csv(csv_path)
    assert {"err_published", "err_published_inside", "err_ci95", "rank", "mean_rank", "n_ok"} <= set(csv.columns)
    assert "(pub. 0.5 ✗)" in md_path.read_text() and "Welch" in md_path.read_text()


def test_a_value_that_does_not_vary_with_the_seed_has_no_interval_to_be_outside_of():
    # a task's truth is the same on every seed (std 0): a published truth 0.4 % away is not "outside our
    # interval" (a wrong implementation marks it False because the zero-width interval excludes it)
    recs = [_rec("gp", s, 0.821, published={**PUB, "metrics": {"err": 0.8174}}) for s in range(3)]
    row = _row(leaderboard(recs), "gp", dim=2)
    assert row.err_ci95 < 1e-12 and pd.isna(row.err_published_inside)  # (round-off makes the std ~1e-16)


# -- pivots --------------------------------------------------------------------------------------------------

def test_grid_axis_choice_is_generic():
    # dim wins even with fewer values; otherwise the numeric parameter with most values; nothing varying: none
    grid = [{"dim": d, "funnels": f, "box": 2.5} for d in (2, 4) for f in (4, 16, 64)]
    assert grid_axes(grid) == ("dim", ["funnels"])
    grid = [{"n": n, "eps": e, "name": "x"} for n in (10, 20, 30) for e in (0.1, 1.0)]
    assert grid_axes(grid) == ("n", ["eps"])
    assert grid_axes([{"dataset": "a"}, {"dataset": "b"}]) == ("dataset", [])
    assert grid_axes([{"dim": 2}]) == (None, [])


def test_pivot_tables_per_funnel_count_with_best_marked(tmp_path):
    # Wrong implementations caught: dims sorted as text (16 before 2), one table mixing funnel counts, the best
    # marked by the largest value when minimising, or a tie with the best left unmarked.
    recs = []
    for dim in (16, 2, 4):
        for funnels in (4, 64):
            base = dim / 10 + funnels / 100
            for s in range(3):
                p = {"dim": dim, "funnels": funnels, "box": 2.5}
                recs.append(_rec("good", s, base + 0.01 * s, p))
                recs.append(_rec("tied", s, base + 0.005 + 0.02 * (s - 1), p))  # not significantly worse
                recs.append(_rec("bad", s, base + 10 + 0.01 * s, p))
    board = leaderboard(recs)
    pivots = pivot_tables(board)
    assert [p.fixed for p in pivots] == [{"funnels": 4}, {"funnels": 64}]
    piv = pivots[0]
    # rows by average mean rank: "tied" has the lower means (its seeds straddle), then "good", then "bad"
    assert piv.x == "dim" and piv.x_values == [2, 4, 16] and piv.rows == ["tied", "good", "bad"]
    cell = piv.cells[("bad", 16)]
    assert json.loads(cell.task_params) == {"dim": 16, "funnels": 4, "box": 2.5}
    assert all(piv.best("good", d) and piv.best("tied", d) and not piv.best("bad", d) for d in piv.x_values)
    store = ResultStore(tmp_path)
    for r in recs:
        store.append(r)
    md = write_report(tmp_path)[1].read_text()
    assert "### fun: err (min) by dim, funnels=4" in md and "| solver | dim=2 | dim=4 | dim=16 |" in md
    good = _row(board, "good", dim=2, funnels=64)
    assert f"| good | **{format_interval(good, 'err')}** |" in md


# -- the HTML page in a browser ------------------------------------------------------------------------------

def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _need_browser() -> str:
    browser = _browser()
    if browser is None:
        why = ("no Chromium binary (chromium, chromium-browser or google-chrome) on PATH: the HTML report cannot "
               "be rendered; install Debian's `chromium` package to run this test")
        if os.environ.get("CI") or os.environ.get("OTBENCH_REQUIRE_BROWSER"):
            pytest.fail(why + " (required in CI)")
        pytest.skip(why)
    return browser


def _chromium(browser: str, *args: str) -> subprocess.CompletedProcess:
    # every request goes to a closed local port: a page that needed a CDN or any network would not render
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--proxy-server=http://127.0.0.1:9", "--virtual-time-budget=15000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


class _PlotProbe(HTMLParser):
    """Per plot div (id plot-N): how many svg.main-svg, trace groups (g.trace) and paths with geometry (a
    non-empty ``d``) inside a trace group it holds -- the lines, markers and error bars plotly.js drew, not the
    axes or grid; and the text of every table cell."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str | None, bool]] = []  # per open element: owning plot id, inside a g.trace
        self.plots: dict[str, dict[str, int]] = {}
        self.cells: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        owner, in_trace = self.stack[-1] if self.stack else (None, False)
        cls = (a.get("class") or "").split()
        if tag == "div" and re.fullmatch(r"plot-\d+", a.get("id") or ""):
            owner = a["id"]
            self.plots[owner] = {"main_svg": 0, "trace": 0, "drawn": 0}
        if owner is not None:
            stats_ = self.plots[owner]
            stats_["main_svg"] += tag == "svg" and "main-svg" in cls
            if tag == "g" and "trace" in cls:
                stats_["trace"] += 1
                in_trace = True
            stats_["drawn"] += in_trace and tag == "path" and len(a.get("d") or "") > 5
        if tag in ("td", "th"):
            self._cell = []
        if tag not in self.VOID:
            self.stack.append((owner, in_trace))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None
        if self.stack and tag not in self.VOID:
            self.stack.pop()

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _html_records() -> list[dict]:
    """Two task labels: a grid (dim x funnels) with traces and published values, and a single configuration."""
    recs = []
    for dim in (2, 8, 32):
        for funnels in (4, 16):
            for solver, level in (("critic_a", 0.3), ("critic_b", 0.5)):
                for s in range(3):
                    p = {"dim": dim, "funnels": funnels}
                    trace = [{"iteration": float(i), "gap": level * (1 - 0.5 ** i) + 0.01 * s, "loss": 1.0 / i,
                              "time": 0.01 * i} for i in range(1, 11)]
                    pub = {**PUB, "metrics": {"err": level + 0.05 * dim / 32}} if solver == "critic_a" else None
                    recs.append(_rec(solver, s, level + 0.01 * dim + 0.013 * s + 0.002 * funnels, p, label="funnel",
                                     published=pub, trace=trace, seconds=0.5 * dim * (1 + s / 10)))
    for solver, value in (("lp_small", 0.123456), ("lp_large", 0.0456)):
        for s in range(2):
            recs.append(_rec(solver, s, value * (1 + 0.01 * s), {"shift": 2.0}, label="gauss", seconds=0.1))
    return recs


def test_html_report_renders_in_headless_chromium(tmp_path):
    browser = _need_browser()
    store = ResultStore(tmp_path)
    recs = _html_records()
    for r in recs:
        store.append(r)
    notes: list[str] = []
    _, _, board = write_report(tmp_path, notes=notes, html=True)
    page = tmp_path / HTML_FILE
    text = page.read_text()
    assert not notes
    # self-contained: no external script, style or image (a CDN plotly.js would be a <script src="https://...">)
    assert not re.search(r"<script[^>]*\bsrc=", text) and not re.search(r"<link[^>]*\bhref=", text)
    assert "Plotly.newPlot" in text and text.count("<script") >= 2

    shot = tmp_path / "shot.png"  # one browser start: the DOM after the scripts ran, and a screenshot
    dom = _chromium(browser, "--dump-dom", f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri())
    assert dom.returncode == 0 and shot.exists(), dom.stderr[-2000:]
    probe = _PlotProbe()
    probe.feed(dom.stdout)
    # 2 metric-vs-dim plots (funnels 4, 16), 2 training curves (gap, loss), 2 time-vs-accuracy, 1 per-solver plot
    n_plots = len(re.findall(r'id="plot-\d+"', text))
    assert n_plots == 7 and len(probe.plots) == n_plots
    for pid, seen in probe.plots.items():
        # Wrong outcomes caught: plotly.js missing or failing (no svg at all), or a figure with no data (svg
        # drawn but no trace group / no path with geometry)
        assert seen["main_svg"] >= 1 and seen["trace"] >= 1 and seen["drawn"] >= 1, (pid, seen)
    # the tables hold the solver names and the numbers of the records
    cells = set(probe.cells)
    for solver in ("critic_a", "critic_b", "lp_small", "lp_large"):
        assert solver in cells
    for _, r in board.iterrows():
        assert format_interval(r, "err") in cells, format_interval(r, "err")
    assert "0.1241 ± 0.0078" in cells  # lp_small: mean of 0.123456 and 0.12469, t(0.975, 1) half-width
    assert any("(pub. " in c and ("✓" in c or "✗" in c) for c in cells)

    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (2000, 1200)
    non_white = (img.min(axis=2) < 235).mean()
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20 and non_white > 0.02, non_white
    # the first plot is on screen and drew its first series in plotly's first colour (#636efa)
    blue = (np.abs(img - np.array([0x63, 0x6E, 0xFA])).sum(axis=2) < 40).sum()
    assert blue > 50, blue


def test_a_failing_html_page_never_costs_the_csv_or_summary(tmp_path, monkeypatch):
    # Wrong implementation caught: an exception in the page builder propagating out of write_report (the CSV or
    # summary of a finished run lost), or a stale report.html left beside new numbers.
    import otbench.html_report

    store = ResultStore(tmp_path)
    for r in _html_records()[:6]:
        store.append(r)
    (tmp_path / HTML_FILE).write_text("old page")

    def broken(*args, **kwargs):
        raise RuntimeError("plotting exploded")

    monkeypatch.setattr(otbench.html_report, "render_html", broken)
    notes: list[str] = []
    csv_path, md_path, _ = write_report(tmp_path, notes=notes, html=True)
    assert csv_path.exists() and md_path.exists() and not (tmp_path / HTML_FILE).exists()
    assert any("report.html was not written: RuntimeError: plotting exploded" in n for n in notes)
    assert "plotting exploded" in md_path.read_text()


def test_cli_report_html_flag(tmp_path):
    from typer.testing import CliRunner

    from otbench.cli import app

    store = ResultStore(tmp_path)
    for r in _html_records()[:6]:
        store.append(r)
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0 and not (tmp_path / HTML_FILE).exists()  # opt-in for `report`
    res = CliRunner().invoke(app, ["report", str(tmp_path), "--html"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / HTML_FILE).exists() and "report.html" in res.output


_TINY_SUITE = """
name: tiny_html
device: cpu
dtype: float64
seeds: [0, 1]
timeout: 60
tasks:
  - {name: gaussian_shift, label: gauss, params: {shift: 2.0, cost: euclidean}, grid: {dim: [2, 3]}}
solvers:
  - {name: exact_lp, label: lp_64, params: {n_samples: 64}}
"""


def test_run_writes_the_page_by_default_and_survives_its_failure(tmp_path, monkeypatch):
    # Wrong implementations caught: `run` not writing report.html; or a page failure after the runs turning into
    # a failed command that leaves no leaderboard (the records of a long run are what must never be lost).
    from typer.testing import CliRunner

    import otbench.html_report
    from otbench.cli import app

    suite = tmp_path / "s.yaml"
    suite.write_text(_TINY_SUITE)
    res = CliRunner().invoke(app, ["run", str(suite), "--results-dir", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "a" / HTML_FILE).read_text()
    assert "lp_64" in page and "gauss: distance_rel_error (min) by dim" in page

    def broken(*args, **kwargs):
        raise RuntimeError("plotting exploded")

    monkeypatch.setattr(otbench.html_report, "render_html", broken)
    res = CliRunner().invoke(app, ["run", str(suite), "--results-dir", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "report.html was not written" in res.output and not (tmp_path / "b" / HTML_FILE).exists()
    board = pd.read_csv(tmp_path / "b" / "leaderboard.csv")
    assert len(board) == 2 and (board.n_seeds == 2).all()
    assert len((tmp_path / "b" / "records.jsonl").read_text().splitlines()) == 4
