"""A self-contained, offline HTML page of a results directory: ``report.html``.

One file, no network: plotly.js is embedded inline once (no CDN, no ``<script src>``), so the page opens from
a laptop, a CI artifact or an air-gapped machine. Contents, in reading order:

- the title and the run environment (the software and machine fields of the records, run counts, dates);
- per task label: the pivot tables of :func:`otbench.report.pivot_tables` (solver x axis parameter, cell =
  mean ± 95 % CI of the primary metric, rank-1 cells in bold; more tables for metrics with published values),
  a plot of the primary metric against the axis parameter per solver with 95 % CI error bars (published values
  as a dotted reference series of the same colour), training curves from the recorded ``trace`` of each run
  (mean over seeds at each step; a menu chooses the task configuration), and time against accuracy
  (``seconds`` against the primary metric, one point per task configuration and solver);
- the full leaderboard table (one row per task configuration x solver configuration).

Built with plotly (figures are data, rendered by plotly.js in the browser); nothing is drawn by hand.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs

from otbench.report import (HEADLINE_METRICS, READING_NOTE, Pivot, format_interval, format_number,
                            pivot_tables, published_metrics)

#: keys of a trace entry that are its x axis, not a quantity to plot
TRACE_X_KEYS = ("iteration", "step", "epoch", "time")
#: at most this many trace quantities are plotted per task label (the most common ones)
MAX_TRACE_PLOTS = 4
ENV_FIELDS = ("otbench_version", "git_revision", "python", "torch", "numpy", "device", "device_name", "cuda",
              "threads", "cpu_count", "hostname")
_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; white-space: nowrap; }
.scroll { overflow-x: auto; max-width: 100%; }
th { background: #f0f0f0; } td.best { font-weight: bold; background: #e8f4e8; }
.otb-plot { border: 1px solid #eee; margin: 0.5em 0 1.5em; }
.note { color: #555; font-size: 0.9em; } code { background: #f5f5f5; }
"""
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def _e(value: Any) -> str:
    return html.escape("" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value))


def _row_name(r: pd.Series | dict[str, Any]) -> str:
    return f"{r['solver_label']} {r['solver_config']}".strip()


class _Page:
    """Collects the sections and figures of the page; figures get ids ``plot-0``, ``plot-1``, ..."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n_plots = 0
        self.colors: dict[str, str] = {}

    def color(self, name: str) -> str:
        palette = qualitative.Plotly + qualitative.D3 + qualitative.Dark24
        return self.colors.setdefault(name, palette[len(self.colors) % len(palette)])

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, fig: go.Figure, caption: str) -> None:
        top = 100 if fig.layout.updatemenus else 60  # room for a menu below the title and plotly's tool bar
        fig.update_layout(template="plotly_white", height=440, margin={"l": 60, "r": 20, "t": top, "b": 50},
                          legend={"font": {"size": 11}})
        div = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"plot-{self.n_plots}",
                          config=_PLOT_CONFIG)
        self.n_plots += 1
        self.add(f'<div class="otb-plot" data-caption="{_e(caption)}">{div}</div>')


def _table(header: list[str], rows: Iterable[list[tuple[str, str]]], cls: str = "") -> str:
    """An HTML table; each cell is (text, css class)."""
    out = [f'<div class="scroll"><table class="{cls}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="{c}">{_e(t)}</td>' if c else f"<td>{_e(t)}</td>"
                                    for t, c in row) + "</tr>")
    return "\n".join(out) + "</tbody></table></div>"


def _pivot_html(piv: Pivot) -> str:
    rows = []
    for name in piv.rows:
        cells = [(name, "solver")]
        for v in piv.x_values:
            r = piv.cells.get((name, v))
            cells.append((format_interval(r, piv.metric) if r is not None else "",
                          "best" if piv.best(name, v) else ""))
        rows.append(cells)
    return f"<h3>{_e(piv.title)}</h3>" + _table(["solver"] + [f"{piv.x}={v}" for v in piv.x_values], rows, "pivot")


def _environment(records: list[dict[str, Any]], board: pd.DataFrame) -> str:
    envs = [r["env"] for r in records if isinstance(r.get("env"), dict)]
    rows = []
    for key in ENV_FIELDS:
        values = sorted({str(e.get(key)) for e in envs if e.get(key) is not None})
        if values:
            rows.append([(key, ""), (", ".join(values), "")])
    statuses = pd.Series([str(r.get("status")) for r in records]).value_counts().to_dict()
    rows.append([("runs", ""), (f"{len(records)} (" + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
                                + ")", "")])
    for key in ("suite", "budget"):
        values = sorted({str(r.get(key)) for r in records if r.get(key) is not None})
        if values:
            rows.append([(key, ""), (", ".join(values), "")])
    started = sorted(str(r["started"]) for r in records if r.get("started"))
    finished = sorted(str(r["finished"]) for r in records if r.get("finished"))
    if started or finished:
        rows.append([("runs made", ""), (f"{(started or finished)[0]} to {(finished or started)[-1]}", "")])
    rows.append([("report made", ""), (_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "")])
    return "<h2>Run environment</h2>" + _table(["field", "value"], rows, "env")


def _error_array(values: Iterable[Any]) -> list[float]:
    return [0.0 if not isinstance(v, (int, float)) or not math.isfinite(v) else float(v) for v in values]


def _log_axis(values: Iterable[Any]) -> bool:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return bool(nums) and min(nums) > 0 and max(nums) / min(nums) >= 8


def _metric_vs_x(page: _Page, piv: Pivot) -> None:
    fig = go.Figure()
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in piv.x_values)
    for name in piv.rows:
        cells = [(v, piv.cells[(name, v)]) for v in piv.x_values if (name, v) in piv.cells]
        xs = [v if numeric else str(v) for v, _ in cells]
        means = [r.get(f"{piv.metric}_mean", math.nan) for _, r in cells]
        halves = [r.get(f"{piv.metric}_ci95", math.nan) for _, r in cells]
        texts = [f"{name}<br>{piv.x}={v}<br>{format_interval(r, piv.metric)}<br>seeds: {r['n_seeds']}"
                 for v, r in cells]
        color = page.color(name)
        fig.add_trace(go.Scatter(x=xs, y=means, mode="lines+markers", name=name, legendgroup=name,
                                 line={"color": color}, error_y={"type": "data", "array": _error_array(halves),
                                                                 "visible": True},
                                 hovertext=texts, hoverinfo="text"))
        pub = [(x, r.get(f"{piv.metric}_published")) for x, (_, r) in zip(xs, cells)]
        pub = [(x, p) for x, p in pub if isinstance(p, (int, float)) and math.isfinite(p)]
        if pub:
            fig.add_trace(go.Scatter(x=[x for x, _ in pub], y=[p for _, p in pub], mode="lines+markers",
                                     name=f"{name} (published)", legendgroup=name,
                                     line={"color": color, "dash": "dot"}, marker={"symbol": "x"}))
    fig.update_layout(title=piv.title, xaxis_title=piv.x, yaxis_title=f"{piv.metric} (mean ± 95% CI)")
    if numeric and _log_axis(piv.x_values):
        fig.update_xaxes(type="log", tickvals=piv.x_values, ticktext=[str(v) for v in piv.x_values])
    page.figure(fig, piv.title)


def _metric_per_solver(page: _Page, fam: pd.DataFrame, label: str, metric: str) -> None:
    """A task label without grid parameters: the primary metric per solver, with published markers."""
    fig = go.Figure()
    names = [_row_name(r) for _, r in fam.iterrows()]
    means = fam.get(f"{metric}_mean", pd.Series([math.nan] * len(fam)))
    halves = fam.get(f"{metric}_ci95", pd.Series([math.nan] * len(fam)))
    fig.add_trace(go.Scatter(x=names, y=list(means), mode="markers", name="ours (mean ± 95% CI)",
                             marker={"size": 10, "color": [page.color(n) for n in names]},
                             error_y={"type": "data", "array": _error_array(halves), "visible": True}))
    pub_col = f"{metric}_published"
    if pub_col in fam.columns and fam[pub_col].notna().any():
        fig.add_trace(go.Scatter(x=names, y=list(fam[pub_col]), mode="markers", name="published",
                                 marker={"symbol": "x", "size": 11, "color": "#444"}))
    title = f"{label}: {metric} per solver"
    fig.update_layout(title=title, yaxis_title=f"{metric} (mean ± 95% CI)")
    page.figure(fig, title)


def _trace_frame(records: list[dict[str, Any]], board: pd.DataFrame) -> pd.DataFrame:
    """Long table of trace entries: task_config, solver (row name), seed, x, quantity, value."""
    names = {}
    for _, r in board.iterrows():
        names.setdefault((r["task_label"], r["task_params"], r["solver_label"], r["solver_params"]),
                         (r["task_config"], _row_name(r)))
    rows = []
    for rec in records:
        trace = rec.get("trace")
        if rec.get("status") != "ok" or not isinstance(trace, list) or not trace:
            continue
        key = (rec.get("task_label"), json.dumps(rec.get("task_params") or {}, sort_keys=True, default=str),
               rec.get("solver_label"), json.dumps(rec.get("solver_params") or {}, sort_keys=True, default=str))
        if key not in names:
            continue
        config, name = names[key]
        for i, entry in enumerate(trace):
            if not isinstance(entry, dict):
                continue
            x_key = next((k for k in TRACE_X_KEYS[:3] if isinstance(entry.get(k), (int, float))), None)
            x = entry[x_key] if x_key else i
            for q, v in entry.items():
                if q in TRACE_X_KEYS or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    continue
                rows.append({"task_label": key[0], "task_config": config, "solver": name, "seed": rec.get("seed"),
                             "x": float(x), "x_key": x_key or "trace entry", "quantity": q, "value": float(v)})
    return pd.DataFrame(rows)


def _training_curves(page: _Page, traces: pd.DataFrame, label: str) -> None:
    fam = traces[traces["task_label"] == label] if not traces.empty else traces
    if fam.empty:
        return
    quantities = fam.groupby("quantity")["value"].size().sort_values(ascending=False).index[:MAX_TRACE_PLOTS]
    for q in quantities:
        sub = fam[fam["quantity"] == q]
        configs = list(dict.fromkeys(sub["task_config"]))  # the menu offers the configurations that have q
        fig = go.Figure()
        owner: list[str] = []  # task config of each plotly trace, for the menu
        for (config, name), grp in sub.groupby(["task_config", "solver"], sort=False):
            curve = grp.groupby("x")["value"].agg(["mean", "count"]).reset_index()
            fig.add_trace(go.Scatter(x=curve["x"], y=curve["mean"], mode="lines", name=name, legendgroup=name,
                                     line={"color": page.color(name)}, visible=config == configs[0],
                                     hovertext=[f"{name} {config}<br>mean of {c} seed(s)" for c in curve["count"]],
                                     hoverinfo="x+y+text"))
            owner.append(config)
        title = f"{label}: training curve of {q} (mean over seeds)"
        fig.update_layout(title=title, xaxis_title=sub["x_key"].mode().iloc[0], yaxis_title=q)
        if len(configs) > 1:
            buttons = [{"label": c or "(default)", "method": "update",
                        "args": [{"visible": [o == c for o in owner]}, {"title": f"{title}: {c}"}]}
                       for c in configs]
            fig.update_layout(updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.02,
                                            "yanchor": "bottom", "direction": "down"}],
                              title=f"{title}: {configs[0]}")
        page.figure(fig, title)


def _time_vs_accuracy(page: _Page, fam: pd.DataFrame, label: str, metric: str) -> None:
    if "seconds_mean" not in fam.columns or f"{metric}_mean" not in fam.columns:
        return
    pts = fam[fam["seconds_mean"].notna() & fam[f"{metric}_mean"].notna()]
    if pts.empty:
        return
    fig = go.Figure()
    for name, grp in pts.groupby(pts.apply(_row_name, axis=1), sort=False):
        fig.add_trace(go.Scatter(
            x=list(grp["seconds_mean"]), y=list(grp[f"{metric}_mean"]), mode="markers", name=name,
            marker={"size": 9, "color": page.color(name)},
            error_y={"type": "data", "array": _error_array(grp.get(f"{metric}_ci95", [])), "visible": True},
            hovertext=[f"{name} {c}<br>{format_number(s)} s" for c, s in zip(grp["task_config"], grp["seconds_mean"])],
            hoverinfo="text+y"))
    title = f"{label}: time vs {metric} (one point per task configuration)"
    fig.update_layout(title=title, xaxis_title="seconds per run (mean)", yaxis_title=f"{metric} (mean ± 95% CI)")
    if _log_axis(pts["seconds_mean"]):
        fig.update_xaxes(type="log")
    page.figure(fig, title)


def _leaderboard_html(board: pd.DataFrame) -> str:
    headline = [m for m in HEADLINE_METRICS if f"{m}_mean" in board.columns]
    header = ["task", "task config", "rank", "mean rank", "solver", "solver config", "seeds", "ok", "failed",
              "skipped", "primary metric", "mean ± 95% CI"] + headline + ["seconds", "beaten by", "note"]
    rows = []
    for _, r in board.iterrows():
        metric = r["primary_metric"]
        note = r.get("first_error") or (f"skipped: {r['skip_reason']}" if r.get("skip_reason") else "")
        cells = [r["task_label"], r["task_config"], r["rank"], r["mean_rank"], r["solver_label"], r["solver_config"],
                 r["n_seeds"], r.get("n_ok"), r["n_failed"], r["n_skipped"], metric,
                 format_interval(r, metric) if isinstance(metric, str) else ""]
        cells += [format_number(r.get(f"{m}_mean")) for m in headline]
        cells += [format_number(r.get("seconds_mean")), r.get("beaten_by", ""), note]
        rows.append([("" if pd.isna(c) else str(c), "") for c in cells])
    return "<h2>Full leaderboard</h2>" + _table(header, rows, "leaderboard")


def render_html(board: pd.DataFrame, records: list[dict[str, Any]], notes: list[str], title: str) -> str:
    """The whole page as one string (plotly.js inline)."""
    page = _Page()
    page.add(f"<h1>{_e(title)}</h1>")
    page.add(_environment(records, board))
    if notes:
        page.add("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    page.add(f'<p class="note">How to read: {_e(READING_NOTE)} In pivot tables, <b>bold</b> cells have rank 1 '
             "in their column.</p>")
    pivots = pivot_tables(board) if not board.empty else []
    published = [pivot_tables(board, m) for m in (published_metrics(board) if not board.empty else [])]
    traces = _trace_frame(records, board) if not board.empty else pd.DataFrame()
    groups = board.groupby(["task_label", "primary_metric"], sort=False) if not board.empty else []
    for (label, metric), fam in groups:
        page.add(f"<h2>{_e(label)} <small>(primary metric {_e(metric)}, "
                 f"{_e(fam['primary_direction'].iloc[0])})</small></h2>")
        own = [p for p in pivots if p.task_label == label and p.metric == metric]
        for piv in own:
            page.add(_pivot_html(piv))
        for pub in published:
            for piv in pub:
                if piv.task_label == label and piv.metric != metric:
                    page.add(_pivot_html(piv))
        for piv in own:
            _metric_vs_x(page, piv)
        if not own:
            _metric_per_solver(page, fam, str(label), str(metric))
        _training_curves(page, traces, label)
        _time_vs_accuracy(page, fam, str(label), str(metric))
    if not board.empty:
        page.add(_leaderboard_html(board))
    body = "\n".join(page.parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>\n'
            f'<style>{_CSS}</style>\n<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n'
            f"<body>\n{body}\n</body></html>\n")


def write_html(path: str | Path, board: pd.DataFrame, records: list[dict[str, Any]], notes: list[str],
               title: str) -> Path:
    """Write :func:`render_html` to ``path`` (via a temporary file, so a failure leaves no half page)."""
    path = Path(path)
    text = render_html(board, records, notes, title)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


__all__ = ["render_html", "write_html"]
