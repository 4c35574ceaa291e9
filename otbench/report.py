"""Leaderboards from a result store: one row per (task configuration, solver configuration, code version).

Each row has the mean, standard deviation and 95 % confidence interval over seeds of every metric (and of time,
iterations and peak memory), the number of seeds, failures and skips (with the first reason), and two ranks
within its task configuration by the task's primary metric. Works on partial or interrupted runs: it reads
whatever records exist.

- ``n_seeds`` counts the seeds with a finite value of the primary metric; ``n_ok`` counts the successful runs
  (``n_failed`` and ``n_skipped`` the others). Every mean, std and interval is over finite values only.
- Intervals: ``<metric>_ci95`` is the half-width of the Student-t 95 % confidence interval of the mean,
  ``t(0.975, n - 1) * std / sqrt(n)`` with the sample std (ddof 1); the interval is ``mean +- ci95``. With one
  seed there is no interval (``ci95`` is empty) and the std is reported as 0.
- Ranks: ``mean_rank`` is the standard competition rank of the means (ties share a rank, the next one skips).
  ``rank`` is tie-aware: ``1 +`` the number of rows of the same task configuration that are *significantly*
  better, where A is significantly better than B when A's mean is better and a two-sided Welch t-test on the
  two sets of seed values rejects equal means at the 5 % level (no multiple-comparison correction). When
  either row has a single seed no test is possible and the order of the means decides. So rows that are not
  significantly different share a rank, ``rank <= mean_rank``, and rank 1 holds every row that no other row
  beats significantly. ``beaten_by`` names the rows that do. Rows are listed by ``rank``, then ``mean_rank``.
- Published values: a record may carry ``"published": {"source", "method", "metrics": {name: value}}``, the
  value a paper reports for that cell. The row then has ``published_source``, ``published_method``,
  ``<metric>_published`` and ``<metric>_published_inside`` (whether the published value lies inside our 95 %
  interval; empty with fewer than two seeds, or when our value does not vary with the seed, e.g. a truth).
  Published values never enter the ranking.
- Pivots (:func:`pivot_tables`): per task label with grid parameters, a table like a paper's: solvers x the
  axis parameter (``dim`` when it varies, else the numeric parameter with most values), one table per value of
  the other grid parameters; a cell is the primary metric's mean +- ci95, marked when its rank is 1.
- Records made by different code (a bumped ``version``, or other plugin source code) are never averaged
  together: they form separate rows, marked ``code=...`` in ``solver_config``, and a note says so.
- A metric measured on fewer seeds than ``n_ok`` (a NaN or missing value in a successful run) gets a
  ``<metric>_n`` column with the number of seeds in its mean.
- Signed errors: where a run reports both ``distance`` and ``true_distance``, the leaderboard adds
  ``distance_bias`` (= distance - truth) and ``distance_rel_bias`` (divided by |truth|), so the direction of a
  bias is visible, not only its size.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from otbench.store import ResultStore

LEADERBOARD_FILE = "leaderboard.csv"
SUMMARY_FILE = "summary.md"
HTML_FILE = "report.html"
#: confidence level of the intervals and significance level (1 - CONFIDENCE) of the rank tests
CONFIDENCE = 0.95
RUNNER_FIELDS = ("seconds", "iterations", "peak_memory_mb")
#: secondary metrics shown beside the primary one in summary.md, when a task's runs have them
HEADLINE_METRICS = ("distance_rel_bias", "grad_cos", "w1_rel_error_pct", "grad_norm_max", "distance_rel_error",
                    "lp_gap", "marginal_violation", "l2_uvp", "map_energy_ratio")
#: (estimate, truth, signed-error name): signed errors derived from a run's own metric values
SIGNED_ERRORS = (("distance", "true_distance", "distance_bias"),)


def _params_text(params: Any) -> str:
    return json.dumps(params if isinstance(params, dict) else {}, sort_keys=True, default=str)


def _code_text(rec: dict[str, Any]) -> str:
    return f"{rec.get('code_version') or ''} {rec.get('code_hash') or ''}".strip()


def _merge_unhashed(frame: pd.DataFrame) -> None:
    """Records made before source hashes were recorded cannot be told apart by hash: within one configuration
    and code version that has such a record, compare code versions only (never split rows on 'unknown')."""
    version = frame["code"].str.split(" ").str[0]
    hashed = frame["code"].str.contains(" ")
    config = ["task_label", "task_params", "solver_label", "solver_params"]
    unknown = (~hashed).groupby([frame[c] for c in config] + [version]).transform("any")
    frame.loc[unknown, "code"] = version[unknown]


def _number(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


@dataclass(frozen=True)
class Interval:
    """Mean, sample std and the half-width of the Student-t confidence interval of the mean of ``n`` values."""

    n: int
    mean: float
    std: float
    half: float  # NaN when n < 2: one value gives no interval

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def finite(values: Any) -> np.ndarray:
    """The finite values of ``values`` as floats (NaN, +-inf and non-numbers dropped)."""
    arr = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)
    return arr[np.isfinite(arr)]


def interval(values: Any, confidence: float = CONFIDENCE) -> Interval:
    """Student-t interval of the mean over the finite ``values``: ``mean +- t((1+c)/2, n-1) * std / sqrt(n)``."""
    v = finite(values)
    n = len(v)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan)
    mean = float(v.mean())
    if n == 1:
        return Interval(1, mean, 0.0, math.nan)
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n))
    return Interval(n, mean, std, half)


def significantly_better(a: Any, b: Any, direction: str, alpha: float = 1 - CONFIDENCE) -> bool:
    """Whether seed values ``a`` are better than ``b`` (``direction`` "min" or "max"), significantly.

    Two-sided Welch t-test at level ``alpha`` on the finite values; with fewer than two values on either side
    no test is possible and the means decide. Two constant samples differ significantly when their means do.
    """
    a, b = finite(a), finite(b)
    if not len(a) or not len(b):
        return False
    diff = float(a.mean() - b.mean())
    better = diff < 0 if direction != "max" else diff > 0
    if not better:
        return False
    if len(a) < 2 or len(b) < 2:
        return True
    va, vb = float(a.var(ddof=1)) / len(a), float(b.var(ddof=1)) / len(b)
    se2 = va + vb
    if se2 == 0:
        return True
    dof = se2 ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    p_value = 2 * float(stats.t.sf(abs(diff) / math.sqrt(se2), dof))
    return p_value < alpha


def _published(value: Any) -> dict[str, Any] | None:
    """A record's ``published`` entry if it has the documented shape, else None."""
    if not isinstance(value, dict) or not isinstance(value.get("metrics"), dict):
        return None
    metrics = {str(k): _number(v) for k, v in value["metrics"].items()}
    return {"source": str(value.get("source") or ""), "method": str(value.get("method") or ""),
            "metrics": {k: v for k, v in metrics.items() if math.isfinite(v)}}


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """A tidy table: one row per run, metric columns prefixed with nothing, spec fields kept."""
    rows = []
    for rec in records:
        primary = rec.get("primary_metric")
        primary = primary if isinstance(primary, list) and len(primary) == 2 else [None, None]
        env = rec.get("env") if isinstance(rec.get("env"), dict) else {}
        row = {
            "key": rec.get("key"), "suite": rec.get("suite"), "task": rec.get("task"),
            "task_label": rec.get("task_label"), "task_params": _params_text(rec.get("task_params", {})),
            "solver": rec.get("solver"), "solver_label": rec.get("solver_label"),
            "solver_params": _params_text(rec.get("solver_params", {})), "seed": rec.get("seed"),
            "status": rec.get("status"), "error": rec.get("error") or rec.get("reason"),
            "budget": rec.get("budget"), "device": env.get("device", rec.get("device")),
            "primary_metric": primary[0], "primary_direction": primary[1], "code": _code_text(rec),
            "published": _published(rec.get("published")),
        }
        for f in RUNNER_FIELDS:
            row[f] = rec.get(f)
        metrics = rec.get("metrics") if isinstance(rec.get("metrics"), dict) else {}
        for name, value in metrics.items():
            row[name] = value
        for est, truth, signed in SIGNED_ERRORS:
            e, t = _number(metrics.get(est)), _number(metrics.get(truth))
            if math.isfinite(e) and math.isfinite(t):
                row[signed] = e - t
                row[signed.replace("_bias", "_rel_bias")] = (e - t) / abs(t) if t != 0 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


_FIXED = {"key", "suite", "seed", "status", "error", "budget", "device", "primary_metric", "primary_direction",
          "code", "published"}
GROUP_COLS = ["task_label", "task", "task_params", "solver_label", "solver", "solver_params", "code"]


def leaderboard(records: list[dict[str, Any]], notes: list[str] | None = None) -> pd.DataFrame:
    """One row per (task configuration, solver configuration, code); ``notes`` collects what a reader must know.

    The columns and the two ranks are described in the module docstring.
    """
    frame = records_frame(records)
    if frame.empty:
        return frame
    _merge_unhashed(frame)
    value_cols = [c for c in frame.columns if c not in _FIXED and c not in GROUP_COLS]
    frame[value_cols] = frame[value_cols].apply(pd.to_numeric, errors="coerce")
    out_rows = []
    primary_values: list[np.ndarray] = []  # per row: the finite seed values of its primary metric
    conflicting_published = []
    for keys, grp in frame.groupby(GROUP_COLS, sort=False, dropna=False):
        ok = grp[grp["status"] == "ok"]
        row: dict[str, Any] = dict(zip(GROUP_COLS, keys))
        metric = grp["primary_metric"].iloc[0]
        primary = finite(ok[metric]) if isinstance(metric, str) and metric in ok.columns else np.array([])
        primary_values.append(primary)
        row.update({
            "budget": grp["budget"].iloc[0], "device": grp["device"].dropna().iloc[0] if grp["device"].notna().any() else None,
            "n_seeds": int(len(primary)) if isinstance(metric, str) else int(len(ok)), "n_ok": int(len(ok)),
            "n_failed": int((grp["status"] == "failed").sum()),
            "n_skipped": int((grp["status"] == "skipped").sum()),
            "primary_metric": metric, "primary_direction": grp["primary_direction"].iloc[0],
        })
        errors = grp.loc[grp["status"] == "failed", "error"].dropna()
        reasons = grp.loc[grp["status"] == "skipped", "error"].dropna()
        row["first_error"] = str(errors.iloc[0])[:200] if len(errors) else ""
        row["skip_reason"] = str(reasons.iloc[0])[:200] if len(reasons) else ""
        for col in value_cols:
            iv = interval(ok[col])
            if iv.n:
                row[f"{col}_mean"] = iv.mean
                row[f"{col}_std"] = iv.std
                row[f"{col}_ci95"] = iv.half
            if iv.n < len(ok) and (iv.n or col == row["primary_metric"]):
                row[f"{col}_n"] = int(iv.n)  # fewer seeds in this mean than successful runs: say how many
        published = [p for p in grp["published"] if p]
        if published:
            pub = published[0]
            if any(p != pub for p in published[1:]):
                conflicting_published.append(f"{row['task_label']} / {row['solver_label']}")
            row["published_source"], row["published_method"] = pub["source"], pub["method"]
            for name, value in pub["metrics"].items():
                row[f"{name}_published"] = value
                half = row.get(f"{name}_ci95", math.nan)
                mean = row.get(f"{name}_mean", math.nan)
                # a zero-width interval (a value that does not vary with the seed, e.g. a task's truth) is no
                # statistical interval: saying "outside" would only restate that two numbers differ
                row[f"{name}_published_inside"] = (
                    pd.NA if not (math.isfinite(half) and half > 1e-12 * max(1.0, abs(mean)))
                    else bool(mean - half <= value <= mean + half))
        out_rows.append(row)
    board = pd.DataFrame(out_rows)
    _rank(board, primary_values)
    board["task_config"] = _varying(board, "task", "task_params")
    board["solver_config"] = _varying(board, "solver", "solver_params")
    _separate_codes(board, notes if notes is not None else [])
    if "beaten_by" in board.columns:  # name the rows that beat each row as a reader sees them
        names = {i: f"{board.at[i, 'solver_label']} {board.at[i, 'solver_config']}".strip() for i in board.index}
        board["beaten_by"] = [", ".join(names[j] for j in b) for b in board["beaten_by"]]
    for col in [c for c in board.columns if c.endswith("_published_inside")]:
        board[col] = board[col].astype("boolean")
    if notes is not None:
        partial = sorted(c[:-2] for c in board.columns if c.endswith("_n") and c[:-2] in value_cols)
        if partial:
            notes.append(f"{len(partial)} metric(s) are missing (NaN) on some successful seeds: {partial}; their "
                         "means use fewer seeds than the successful runs n_ok (see the *_n columns)")
        if conflicting_published:
            notes.append(f"records of one cell carry different published values ({conflicting_published[:3]}); "
                         "the first is shown")
    lead = ["task_label", "task_config", "rank", "mean_rank", "solver_label", "solver_config", "n_seeds", "n_ok",
            "n_failed", "n_skipped", "task_params", "solver_params"]
    rest = [c for c in board.columns if c not in lead]
    return board[lead + rest].sort_values(["task_label", "task_params", "rank", "mean_rank"], na_position="last",
                                          kind="stable")


def _rank(board: pd.DataFrame, primary_values: list[np.ndarray]) -> None:
    """Add ``mean_rank``, the tie-aware ``rank`` and ``beaten_by`` (row indices) within each task configuration."""
    board["rank"], board["mean_rank"] = pd.NA, pd.NA
    board["beaten_by"] = [[] for _ in range(len(board))]
    for _, idx in board.groupby(["task_label", "task_params"], sort=False).groups.items():
        sub = board.loc[idx]
        metric = sub["primary_metric"].iloc[0]
        col = f"{metric}_mean"
        if not isinstance(metric, str) or col not in board.columns:
            continue
        direction = sub["primary_direction"].iloc[0]
        board.loc[idx, "mean_rank"] = sub[col].rank(ascending=direction != "max", method="min", na_option="keep")
        ranked = [i for i in idx if not pd.isna(board.at[i, col])]
        for i in ranked:
            beaten_by = [j for j in ranked if j != i and significantly_better(primary_values[j], primary_values[i],
                                                                               direction)]
            board.at[i, "beaten_by"] = beaten_by
            board.at[i, "rank"] = 1 + len(beaten_by)
    board["rank"] = board["rank"].astype("Int64")
    board["mean_rank"] = board["mean_rank"].astype("Int64")


def _separate_codes(board: pd.DataFrame, notes: list[str]) -> None:
    """Mark rows of one configuration made by different code, and say so in ``notes``."""
    config = ["task_label", "task_params", "solver_label", "solver_params"]
    for keys, grp in board.groupby(config, sort=False):
        if grp["code"].nunique() < 2:
            continue
        for i in grp.index:
            short = hashlib.sha1(str(board.at[i, "code"]).encode()).hexdigest()[:6]
            board.at[i, "solver_config"] = f"{board.at[i, 'solver_config']} code={short}".strip()
        notes.append(f"task {keys[0]!r} / solver {keys[2]!r}: records of {grp['code'].nunique()} code versions "
                     f"(a changed `version` or plugin source) are kept in separate rows marked code=...; "
                     "`otbench report DIR --suite SUITE` keeps only the runs the suite plans now")


def _varying(board: pd.DataFrame, name_col: str, params_col: str) -> list[str]:
    """Per row, the parameters that differ between rows of the same component (``k=v`` text)."""
    parsed = [json.loads(p) for p in board[params_col]]
    varying: dict[str, set[str]] = {}
    for name in board[name_col].unique():
        rows = [p for p, n in zip(parsed, board[name_col]) if n == name]
        keys = set().union(*rows) if rows else set()
        varying[name] = {k for k in keys if len({json.dumps(r.get(k), sort_keys=True) for r in rows}) > 1}
    return [" ".join(f"{k}={p.get(k)}" for k in sorted(varying[n])) for p, n in zip(parsed, board[name_col])]


def format_number(value: Any) -> str:
    """How every report shows a number: 4 significant digits, empty for a missing value."""
    v = _number(value)
    return "" if math.isnan(v) else f"{v:.4g}"


def format_interval(row: pd.Series | dict[str, Any], metric: str, published: bool = True) -> str:
    """``mean ± ci95`` of ``metric`` in a leaderboard row (``mean (1 seed)`` without an interval), followed by
    ``(pub. V ✓|✗)`` when the row has a published value (✓: inside our interval; no mark: no interval)."""
    get = row.get if isinstance(row, dict) else (lambda k, d=None: row[k] if k in row.index else d)
    mean, half = _number(get(f"{metric}_mean")), _number(get(f"{metric}_ci95"))
    if math.isnan(mean):
        text = ""
    elif math.isfinite(half):
        text = f"{format_number(mean)} ± {f'{half:#.2g}'.rstrip('.')}"
    else:
        text = f"{format_number(mean)} (1 seed)"
    pub = _number(get(f"{metric}_published"))
    if published and math.isfinite(pub):
        inside = get(f"{metric}_published_inside")
        mark = "" if inside is None or pd.isna(inside) else (" ✓" if bool(inside) else " ✗")
        text = f"{text} (pub. {format_number(pub)}{mark})".strip()
    return text


@dataclass
class Pivot:
    """One paper-style table: rows are solver configurations (best average ``mean_rank`` first), columns the
    values of the axis parameter ``x`` (sorted), for one task label at fixed values (``fixed``) of its other grid
    parameters."""

    task_label: str
    metric: str
    direction: str
    x: str
    x_values: list[Any]
    fixed: dict[str, Any]
    rows: list[str] = field(default_factory=list)  # "solver_label solver_config"
    cells: dict[tuple[str, Any], pd.Series] = field(default_factory=dict)  # (row, x value) -> leaderboard row
    ranked: bool = True  # the metric is the primary one: rank-1 cells are marked best

    @property
    def title(self) -> str:
        fixed = ", ".join(f"{k}={v}" for k, v in self.fixed.items())
        how = f" ({self.direction})" if self.direction else ""
        return f"{self.task_label}: {self.metric}{how} by {self.x}" + (f", {fixed}" if fixed else "")

    def best(self, row: str, x: Any) -> bool:
        """Rank 1 in its column: no other solver is significantly better there."""
        r = self.cells.get((row, x))
        return self.ranked and r is not None and not pd.isna(r["rank"]) and int(r["rank"]) == 1


def published_metrics(board: pd.DataFrame) -> list[str]:
    """The metrics with a published value in some row, in column order."""
    return [c.removesuffix("_published") for c in board.columns
            if c.endswith("_published") and board[c].notna().any()]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _sort_key(v: Any) -> tuple:
    return (0, float(v), "") if _is_number(v) else (1, 0.0, json.dumps(v, sort_keys=True, default=str))


def grid_axes(params: Sequence[dict[str, Any]]) -> tuple[str | None, list[str]]:
    """The axis parameter and the other varying parameters among the ``params`` of one task label.

    The axis is ``dim`` when it varies and is numeric, else the numeric varying parameter with most distinct
    values, else the varying parameter with most values; None when nothing varies.
    """
    keys = sorted(set().union(*params)) if params else []
    distinct = {k: {json.dumps(p.get(k), sort_keys=True, default=str) for p in params} for k in keys}
    varying = [k for k in keys if len(distinct[k]) > 1]
    if not varying:
        return None, []
    numeric = [k for k in varying if all(_is_number(p.get(k)) for p in params)]
    if "dim" in numeric:
        x = "dim"
    else:
        x = max(numeric or varying, key=lambda k: (len(distinct[k]), -keys.index(k)))
    return x, [k for k in varying if k != x]


def pivot_tables(board: pd.DataFrame, metric: str | None = None) -> list[Pivot]:
    """Paper-style tables for every task label with grid parameters (see :class:`Pivot`): of the primary
    metric, or of ``metric`` (then no cell is marked best: the ranks are by the primary metric)."""
    out: list[Pivot] = []
    if board.empty:
        return out
    for (label, primary), fam in board.groupby(["task_label", "primary_metric"], sort=False):
        if metric is not None and (f"{metric}_mean" not in fam.columns or fam[f"{metric}_mean"].isna().all()):
            continue
        params = [json.loads(t) for t in fam["task_params"]]
        x, others = grid_axes(list({json.dumps(p, sort_keys=True): p for p in params}.values()))
        if x is None:
            continue
        tables: dict[str, Pivot] = {}
        for (_, r), p in zip(fam.iterrows(), params):
            fixed = {k: p.get(k) for k in others}
            key = json.dumps(fixed, sort_keys=True, default=str)
            if key not in tables:
                shown = metric or primary
                tables[key] = Pivot(str(label), str(shown), str(r["primary_direction"]) if shown == primary else "",
                                    x, [], fixed, ranked=shown == primary)
            piv = tables[key]
            name = f"{r['solver_label']} {r['solver_config']}".strip()
            if name not in piv.rows:
                piv.rows.append(name)
            if p.get(x) not in piv.x_values:
                piv.x_values.append(p.get(x))
            piv.cells[(name, p.get(x))] = r
        for key in sorted(tables, key=lambda k: [_sort_key(v) for v in json.loads(k).values()]):
            piv = tables[key]
            piv.x_values.sort(key=_sort_key)
            piv.rows.sort(key=lambda name: _mean_position(piv, name))
            out.append(piv)
    return out


def _mean_position(piv: Pivot, name: str) -> float:
    """A pivot row's average ``mean_rank`` over its columns (rows with no ranked cell last)."""
    ranks = [float(r["mean_rank"]) for (n, _), r in piv.cells.items() if n == name and not pd.isna(r["mean_rank"])]
    return sum(ranks) / len(ranks) if ranks else math.inf


def _pivot_markdown(piv: Pivot) -> list[str]:
    lines = [f"### {piv.title}", "", "| solver | " + " | ".join(f"{piv.x}={v}" for v in piv.x_values) + " |",
             "|---|" + "---|" * len(piv.x_values)]
    for name in piv.rows:
        cells = []
        for v in piv.x_values:
            r = piv.cells.get((name, v))
            text = format_interval(r, piv.metric).replace("|", "\\|") if r is not None else ""
            cells.append(f"**{text}**" if text and piv.best(name, v) else text)
        lines.append(f"| {name.replace('|', chr(92) + '|')} | " + " | ".join(cells) + " |")
    return lines + [""]


def _cell(r: pd.Series, c: str) -> str:
    v = r[c]
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        text = f"{v:+.4g}" if "bias" in c else f"{v:.4g}"
        n_col = c.removesuffix("_mean") + "_n"
        if c.endswith("_mean") and n_col in r.index and not pd.isna(r[n_col]):
            text += f" ({int(r[n_col])} of {r['n_seeds']} seeds)"
        return text
    return "" if pd.isna(v) else str(v).replace("|", "\\|")


READING_NOTE = (
    "intervals are Student-t 95 % confidence intervals of the mean over the seeds with a finite value "
    "(n_seeds; none with one seed); `rank` is 1 + the number of solvers significantly better on the primary "
    "metric (two-sided Welch t-test at 5 %, means compared directly where a solver has one seed), so solvers "
    "that are not significantly different share a rank; `mean_rank` orders the means alone. `pub. V ✓/✗`: the "
    "published value of the cell and whether it lies inside our interval; published values are never ranked.")


def _markdown(board: pd.DataFrame, frame: pd.DataFrame, title: str, notes: list[str]) -> str:
    lines = [f"# {title}", ""]
    counts = frame["status"].value_counts().to_dict() if not frame.empty else {}
    lines.append(f"Runs: {len(frame)} ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})")
    if not frame.empty and frame["device"].notna().any():
        lines.append(f"Device: {', '.join(sorted(map(str, frame['device'].dropna().unique())))}; "
                     f"budget: {', '.join(sorted(map(str, frame['budget'].dropna().unique())))}")
    lines.append("")
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["How to read: " + READING_NOTE, ""]
    pivots = pivot_tables(board)
    if pivots:
        lines += ["## Pivot tables", "", "Primary metric, mean ± 95 % CI half-width over seeds; **bold**: rank 1 "
                  "in its column (best, or not significantly worse than the best).", ""]
        for piv in pivots:
            lines += _pivot_markdown(piv)
    for m in published_metrics(board):
        if not any(m == p.metric for p in pivots):
            for piv in pivot_tables(board, m):
                lines += _pivot_markdown(piv)
    for (task_label, task_params), grp in board.groupby(["task_label", "task_params"], sort=False):
        metric = grp["primary_metric"].iloc[0]
        lines += [f"## {task_label} {grp['task_config'].iloc[0]}", "", f"Parameters: `{task_params}`", "",
                  f"Ranked by `{metric}` ({grp['primary_direction'].iloc[0]}).", ""]
        cols = ["rank"] + (["mean_rank"] if (grp["rank"] != grp["mean_rank"]).any() else [])
        cols += ["solver_label", "solver_config", "n_seeds", "n_failed", "n_skipped"]
        has_metric = f"{metric}_mean" in grp.columns and grp[f"{metric}_mean"].notna().any()
        cols += [f"{metric} (mean ± 95% CI)"] if has_metric else []
        shown = [f"{metric}_std"] + [f"{m}_mean" for m in HEADLINE_METRICS if m != metric]
        cols += [c for c in shown + ["seconds_mean"] if c in grp.columns and grp[c].notna().any()]
        pub = [m for m in published_metrics(grp) if f"{m}_mean" in grp.columns]
        if pub:
            cols.append("ours vs published")
        with_note = (grp["n_seeds"] < grp["n_seeds"].max()) | (grp["n_failed"] > 0) | (grp["n_skipped"] > 0)
        if with_note.any():
            cols.append("note")
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for _, r in grp.iterrows():
            cells = []
            for c in cols:
                if c.endswith(" (mean ± 95% CI)"):
                    cells.append(format_interval(r, metric).replace("|", "\\|"))
                elif c == "ours vs published":
                    parts = [f"{m}: {format_interval(r, m)}" for m in pub if pd.notna(r.get(f"{m}_published"))]
                    src = f" [{r['published_source']}]" if parts and r.get("published_source") else ""
                    cells.append(("; ".join(parts) + src).replace("|", "\\|"))
                elif c == "note":
                    why = r["first_error"] or (f"skipped: {r['skip_reason']}" if r["skip_reason"] else "")
                    cells.append(str(why).replace("|", "\\|").replace("\n", " "))
                else:
                    cells.append(_cell(r, c))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    failed = frame[frame["status"] == "failed"] if not frame.empty else frame
    if len(failed):
        lines += ["## Failures", ""]
        for _, r in failed.iterrows():
            lines.append(f"- {r['task_label']} / {r['solver_label']} / seed {r['seed']}: {str(r['error'])[:300]}")
        lines.append("")
    skipped = frame[frame["status"] == "skipped"] if not frame.empty else frame
    if len(skipped):
        lines += ["## Skipped", ""]
        for (task_label, solver_label, reason), grp in skipped.groupby(
                ["task_label", "solver_label", "error"], sort=False, dropna=False):
            lines.append(f"- {task_label} / {solver_label} ({len(grp)} run(s)): {reason}")
        lines.append("")
    return "\n".join(lines)


def write_report(directory: str | Path, keys: set[str] | None = None, out_dir: str | Path | None = None,
                 notes: list[str] | None = None, html: bool = False) -> tuple[Path, Path, pd.DataFrame]:
    """Rebuild ``leaderboard.csv`` and ``summary.md`` (and ``report.html`` when ``html``) from ``directory``.

    ``keys`` keeps only those runs (e.g. the runs a suite plans now, leaving out runs of parameters the suite
    no longer has); ``out_dir`` writes the report elsewhere (default: ``directory``). ``notes`` receives what
    the reader must know (skipped lines of the records file, code versions kept apart, partial metrics); the
    notes are also written at the top of summary.md. The CSV is written first; a failure to make the HTML
    page never stops the CSV or the summary: a previous ``report.html`` is removed (it would be stale) and a
    note says why none was made.
    """
    directory = Path(directory)
    notes = notes if notes is not None else []
    store = ResultStore(directory)
    records = [r for k, r in store.latest().items() if keys is None or k in keys]
    if store.problems:
        notes.append(store.problems.describe(store.path))
    board = leaderboard(records, notes)
    frame = records_frame(records)
    target = Path(out_dir) if out_dir is not None else directory
    csv_path, md_path = target / LEADERBOARD_FILE, target / SUMMARY_FILE
    target.mkdir(parents=True, exist_ok=True)
    board.to_csv(csv_path, index=False)
    title = f"otbench results: {frame['suite'].iloc[0]}" if not frame.empty else "otbench results (no records)"
    if html:
        html_path = target / HTML_FILE
        try:
            from otbench.html_report import write_html

            write_html(html_path, board, records, list(notes), title)
        except Exception as exc:  # noqa: BLE001 - the page is a view: never lose the CSV or summary over it
            html_path.unlink(missing_ok=True)
            notes.append(f"{HTML_FILE} was not written: {type(exc).__name__}: {exc}")
    md_path.write_text(_markdown(board, frame, title, notes) if not board.empty else f"# {title}\n")
    return csv_path, md_path, board
