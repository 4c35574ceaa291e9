"""Leaderboards from a result store: one row per (task configuration, solver configuration, code version).

Each row has the mean and standard deviation over seeds of every metric (and of time, iterations and peak
memory), the number of successful seeds, the number of failures and skips (with the first reason), and the
rank within its task configuration by the task's primary metric. Works on partial or interrupted runs: it reads
whatever records exist.

- Records made by different code (a bumped ``version``, or other plugin source code) are never averaged
  together: they form separate rows, marked ``code=...`` in ``solver_config``, and a note says so.
- A metric measured on fewer seeds than ``n_seeds`` (a NaN or missing value in a successful run) gets a
  ``<metric>_n`` column with the number of seeds in its mean.
- Signed errors: where a run reports both ``distance`` and ``true_distance``, the leaderboard adds
  ``distance_bias`` (= distance - truth) and ``distance_rel_bias`` (divided by |truth|), so the direction of a
  bias is visible, not only its size.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from otbench.store import ResultStore

LEADERBOARD_FILE = "leaderboard.csv"
SUMMARY_FILE = "summary.md"
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
          "code"}
GROUP_COLS = ["task_label", "task", "task_params", "solver_label", "solver", "solver_params", "code"]


def leaderboard(records: list[dict[str, Any]], notes: list[str] | None = None) -> pd.DataFrame:
    """One row per (task configuration, solver configuration, code); ``notes`` collects what a reader must know."""
    frame = records_frame(records)
    if frame.empty:
        return frame
    _merge_unhashed(frame)
    value_cols = [c for c in frame.columns if c not in _FIXED and c not in GROUP_COLS]
    frame[value_cols] = frame[value_cols].apply(pd.to_numeric, errors="coerce")
    out_rows = []
    for keys, grp in frame.groupby(GROUP_COLS, sort=False, dropna=False):
        ok = grp[grp["status"] == "ok"]
        row: dict[str, Any] = dict(zip(GROUP_COLS, keys))
        row.update({
            "budget": grp["budget"].iloc[0], "device": grp["device"].dropna().iloc[0] if grp["device"].notna().any() else None,
            "n_seeds": int(len(ok)), "n_failed": int((grp["status"] == "failed").sum()),
            "n_skipped": int((grp["status"] == "skipped").sum()),
            "primary_metric": grp["primary_metric"].iloc[0], "primary_direction": grp["primary_direction"].iloc[0],
        })
        errors = grp.loc[grp["status"] == "failed", "error"].dropna()
        reasons = grp.loc[grp["status"] == "skipped", "error"].dropna()
        row["first_error"] = str(errors.iloc[0])[:200] if len(errors) else ""
        row["skip_reason"] = str(reasons.iloc[0])[:200] if len(reasons) else ""
        for col in value_cols:
            vals = ok[col].dropna()
            if len(vals):
                row[f"{col}_mean"] = float(vals.mean())
                row[f"{col}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            if len(vals) < len(ok) and (len(vals) or col == row["primary_metric"]):
                row[f"{col}_n"] = int(len(vals))  # fewer seeds in this mean than n_seeds: say how many
        out_rows.append(row)
    board = pd.DataFrame(out_rows)
    board["rank"] = pd.NA
    for _, idx in board.groupby(["task_label", "task_params"], sort=False).groups.items():
        sub = board.loc[idx]
        metric = sub["primary_metric"].iloc[0]
        col = f"{metric}_mean"
        if metric is None or (isinstance(metric, float) and math.isnan(metric)) or col not in board.columns:
            continue
        ascending = sub["primary_direction"].iloc[0] != "max"
        board.loc[idx, "rank"] = sub[col].rank(ascending=ascending, method="min", na_option="keep")
    board["rank"] = board["rank"].astype("Int64")
    board["task_config"] = _varying(board, "task", "task_params")
    board["solver_config"] = _varying(board, "solver", "solver_params")
    _separate_codes(board, notes if notes is not None else [])
    partial = sorted(c[:-2] for c in board.columns if c.endswith("_n") and c[:-2] in value_cols)
    if partial and notes is not None:
        notes.append(f"{len(partial)} metric(s) are missing (NaN) on some successful seeds: {partial}; their means "
                     "use fewer seeds than n_seeds (see the *_n columns)")
    lead = ["task_label", "task_config", "rank", "solver_label", "solver_config", "n_seeds", "n_failed", "n_skipped",
            "task_params", "solver_params"]
    rest = [c for c in board.columns if c not in lead]
    return board[lead + rest].sort_values(["task_label", "task_params", "rank"], na_position="last", kind="stable")


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
    for (task_label, task_params), grp in board.groupby(["task_label", "task_params"], sort=False):
        metric = grp["primary_metric"].iloc[0]
        lines += [f"## {task_label} {grp['task_config'].iloc[0]}", "", f"Parameters: `{task_params}`", "",
                  f"Ranked by `{metric}` ({grp['primary_direction'].iloc[0]}).", ""]
        cols = ["rank", "solver_label", "solver_config", "n_seeds", "n_failed", "n_skipped"]
        shown = [f"{metric}_mean", f"{metric}_std"]
        shown += [f"{m}_mean" for m in HEADLINE_METRICS if m != metric]
        cols += [c for c in shown + ["seconds_mean"] if c in grp.columns and grp[c].notna().any()]
        with_note = (grp["n_seeds"] < grp["n_seeds"].max()) | (grp["n_failed"] > 0) | (grp["n_skipped"] > 0)
        if with_note.any():
            cols.append("note")
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for _, r in grp.iterrows():
            cells = []
            for c in cols:
                if c == "note":
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
                 notes: list[str] | None = None) -> tuple[Path, Path, pd.DataFrame]:
    """Rebuild ``leaderboard.csv`` and ``summary.md`` from the records in ``directory``.

    ``keys`` keeps only those runs (e.g. the runs a suite plans now, leaving out runs of parameters the suite
    no longer has); ``out_dir`` writes the report elsewhere (default: ``directory``). ``notes`` receives what
    the reader must know (skipped lines of the records file, code versions kept apart, partial metrics); the
    notes are also written at the top of summary.md.
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
    md_path.write_text(_markdown(board, frame, title, notes) if not board.empty else f"# {title}\n")
    return csv_path, md_path, board
