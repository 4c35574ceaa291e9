"""Leaderboards from a result store: one row per (task configuration, solver configuration).

Each row has the mean and standard deviation over seeds of every metric (and of time, iterations and peak
memory), the number of successful seeds, the number of failures, and the rank within its task configuration
by the task's primary metric. Works on partial or interrupted runs: it reads whatever records exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from otbench.store import ResultStore

LEADERBOARD_FILE = "leaderboard.csv"
SUMMARY_FILE = "summary.md"
RUNNER_FIELDS = ("seconds", "iterations", "peak_memory_mb")
#: secondary metrics shown beside the primary one in summary.md, when a task's runs have them
HEADLINE_METRICS = ("grad_cos", "w1_rel_error_pct", "grad_norm_max", "distance_rel_error", "lp_gap",
                    "marginal_violation", "l2_uvp", "map_energy_ratio")


def _params_text(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """A tidy table: one row per run, metric columns prefixed with nothing, spec fields kept."""
    rows = []
    for rec in records:
        row = {
            "key": rec.get("key"), "suite": rec.get("suite"), "task": rec.get("task"),
            "task_label": rec.get("task_label"), "task_params": _params_text(rec.get("task_params", {})),
            "solver": rec.get("solver"), "solver_label": rec.get("solver_label"),
            "solver_params": _params_text(rec.get("solver_params", {})), "seed": rec.get("seed"),
            "status": rec.get("status"), "error": rec.get("error") or rec.get("reason"),
            "budget": rec.get("budget"), "device": (rec.get("env") or {}).get("device", rec.get("device")),
            "primary_metric": (rec.get("primary_metric") or [None, None])[0],
            "primary_direction": (rec.get("primary_metric") or [None, None])[1],
        }
        for f in RUNNER_FIELDS:
            row[f] = rec.get(f)
        for name, value in (rec.get("metrics") or {}).items():
            row[name] = value
        rows.append(row)
    return pd.DataFrame(rows)


def leaderboard(records: list[dict[str, Any]]) -> pd.DataFrame:
    frame = records_frame(records)
    if frame.empty:
        return frame
    group_cols = ["task_label", "task", "task_params", "solver_label", "solver", "solver_params"]
    fixed = set(group_cols) | {"key", "suite", "seed", "status", "error", "budget", "device",
                               "primary_metric", "primary_direction"}
    value_cols = [c for c in frame.columns if c not in fixed]
    frame[value_cols] = frame[value_cols].apply(pd.to_numeric, errors="coerce")
    out_rows = []
    for keys, grp in frame.groupby(group_cols, sort=False, dropna=False):
        ok = grp[grp["status"] == "ok"]
        row: dict[str, Any] = dict(zip(group_cols, keys))
        row.update({
            "budget": grp["budget"].iloc[0], "device": grp["device"].dropna().iloc[0] if grp["device"].notna().any() else None,
            "n_seeds": int(len(ok)), "n_failed": int((grp["status"] == "failed").sum()),
            "n_skipped": int((grp["status"] == "skipped").sum()),
            "primary_metric": grp["primary_metric"].iloc[0], "primary_direction": grp["primary_direction"].iloc[0],
        })
        errors = grp.loc[grp["status"] != "ok", "error"].dropna()
        row["first_error"] = str(errors.iloc[0])[:200] if len(errors) else ""
        for col in value_cols:
            vals = ok[col].dropna()
            if len(vals):
                row[f"{col}_mean"] = float(vals.mean())
                row[f"{col}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out_rows.append(row)
    board = pd.DataFrame(out_rows)
    board["rank"] = pd.NA
    for _, idx in board.groupby(["task_label", "task_params"], sort=False).groups.items():
        sub = board.loc[idx]
        metric = sub["primary_metric"].iloc[0]
        col = f"{metric}_mean"
        if metric is None or col not in board.columns:
            continue
        ascending = sub["primary_direction"].iloc[0] != "max"
        board.loc[idx, "rank"] = sub[col].rank(ascending=ascending, method="min", na_option="keep")
    board["rank"] = board["rank"].astype("Int64")
    board["task_config"] = _varying(board, "task_label", "task_params")
    board["solver_config"] = _varying(board, "solver_label", "solver_params")
    lead = ["task_label", "task_config", "rank", "solver_label", "solver_config", "n_seeds", "n_failed", "n_skipped",
            "task_params", "solver_params"]
    rest = [c for c in board.columns if c not in lead]
    return board[lead + rest].sort_values(["task_label", "task_params", "rank"], na_position="last", kind="stable")


def _varying(board: pd.DataFrame, label_col: str, params_col: str) -> list[str]:
    """Per row, the parameters that differ between entries sharing a label, as ``k=v`` text."""
    parsed = [json.loads(p) for p in board[params_col]]
    varying: dict[str, set[str]] = {}
    for label in board[label_col].unique():
        rows = [p for p, lab in zip(parsed, board[label_col]) if lab == label]
        keys = set().union(*rows) if rows else set()
        varying[label] = {k for k in keys if len({json.dumps(r.get(k), sort_keys=True) for r in rows}) > 1}
    return [" ".join(f"{k}={p.get(k)}" for k in sorted(varying[lab])) for p, lab in zip(parsed, board[label_col])]


def _markdown(board: pd.DataFrame, frame: pd.DataFrame, title: str) -> str:
    lines = [f"# {title}", ""]
    counts = frame["status"].value_counts().to_dict() if not frame.empty else {}
    lines.append(f"Runs: {len(frame)} ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})")
    if not frame.empty and frame["device"].notna().any():
        lines.append(f"Device: {', '.join(sorted(frame['device'].dropna().unique()))}; "
                     f"budget: {', '.join(sorted(frame['budget'].dropna().unique()))}")
    lines.append("")
    for (task_label, task_params), grp in board.groupby(["task_label", "task_params"], sort=False):
        metric = grp["primary_metric"].iloc[0]
        lines += [f"## {task_label} {grp['task_config'].iloc[0]}", "", f"Parameters: `{task_params}`", "",
                  f"Ranked by `{metric}` ({grp['primary_direction'].iloc[0]}).", ""]
        cols = ["rank", "solver_label", "solver_config", "n_seeds", "n_failed"]
        shown = [f"{metric}_mean", f"{metric}_std"]
        shown += [f"{m}_mean" for m in HEADLINE_METRICS if m != metric]
        cols += [c for c in shown + ["seconds_mean"] if c in grp.columns and grp[c].notna().any()]
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for _, r in grp.iterrows():
            cells = []
            for c in cols:
                v = r[c]
                cells.append(f"{v:.4g}" if isinstance(v, float) else ("" if pd.isna(v) else str(v)))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    failed = frame[frame["status"] == "failed"] if not frame.empty else frame
    if len(failed):
        lines += ["## Failures", ""]
        for _, r in failed.iterrows():
            lines.append(f"- {r['task_label']} / {r['solver_label']} / seed {r['seed']}: {str(r['error'])[:300]}")
        lines.append("")
    return "\n".join(lines)


def write_report(directory: str | Path, keys: set[str] | None = None,
                 out_dir: str | Path | None = None) -> tuple[Path, Path, pd.DataFrame]:
    """Rebuild ``leaderboard.csv`` and ``summary.md`` from the records in ``directory``.

    ``keys`` keeps only those runs (e.g. the runs a suite plans now, leaving out runs of parameters the suite
    no longer has); ``out_dir`` writes the report elsewhere (default: ``directory``).
    """
    directory = Path(directory)
    store = ResultStore(directory)
    records = [r for k, r in store.latest().items() if keys is None or k in keys]
    board = leaderboard(records)
    frame = records_frame(records)
    target = Path(out_dir) if out_dir is not None else directory
    csv_path, md_path = target / LEADERBOARD_FILE, target / SUMMARY_FILE
    target.mkdir(parents=True, exist_ok=True)
    board.to_csv(csv_path, index=False)
    title = f"otbench results: {frame['suite'].iloc[0]}" if not frame.empty else "otbench results (no records)"
    md_path.write_text(_markdown(board, frame, title) if not board.empty else f"# {title}\n")
    return csv_path, md_path, board
