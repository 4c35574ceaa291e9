"""The ``otbench`` command line: run, validate, list, plugins, report, new-plugin.

Exit codes: 0 success (failed runs are reported, not fatal, unless ``--strict``); 1 failed runs with
``--strict``; 2 invalid suite or usage; 130 interrupted (finished runs are saved; rerun to resume).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="otbench: benchmark optimal-transport solvers on tasks with known answers.")
console = Console(stderr=True)
out = Console()

EXIT_STRICT_FAILURE, EXIT_INVALID, EXIT_INTERRUPTED = 1, 2, 130


def _registry(plugin_modules: list[str] | None = None):
    from otbench.registry import PLUGIN_MODULES_ENV, get_registry

    if plugin_modules:
        current = [m for m in os.environ.get(PLUGIN_MODULES_ENV, "").split(",") if m]
        os.environ[PLUGIN_MODULES_ENV] = ",".join(current + list(plugin_modules))
    registry = get_registry(refresh=bool(plugin_modules))
    for failure in registry.failures:
        console.print(f"[yellow]warning:[/] plugin {failure.plugin!r} failed to load: {failure.error}")
    return registry


def _load_and_validate(suite_path: Path, registry):
    from otbench.suite import SuiteError, load_suite, validate_suite

    try:
        suite = load_suite(suite_path)
        validate_suite(suite, registry, suite_path)
    except SuiteError as exc:
        console.print(f"[red]error:[/] {exc}", markup=False, highlight=False)
        raise typer.Exit(EXIT_INVALID) from None
    return suite


@app.command()
def validate(suite_path: Path = typer.Argument(..., help="suite YAML file"),
             device: Optional[str] = typer.Option(None, help="plan for this device type: cpu or cuda")) -> None:
    """Check a suite (schema, names, parameters, budgets) and count its runs, without running any solver."""
    from otbench.suite import plan_runs

    registry = _registry()
    suite = _load_and_validate(suite_path, registry)
    for dev in [device] if device else ["cpu", "cuda"]:
        runs = plan_runs(suite, registry, dev)
        out.print(f"{suite_path}: valid; {len(runs)} runs on {dev} "
                  f"({len(suite.tasks)} task entries, {len(suite.solvers)} solver entries)")
        if not runs:
            console.print(f"[red]error:[/] {suite_path}: the {dev} budget expands to no runs")
            raise typer.Exit(EXIT_INVALID)


@app.command()
def run(
    suite_path: Path = typer.Argument(..., help="suite YAML file"),
    results_dir: Optional[Path] = typer.Option(None, "--results-dir", help="default: results/<suite>/<device>"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="worker processes (1 = in-process)"),
    force: bool = typer.Option(False, "--force", help="rerun runs that are already done"),
    device: Optional[str] = typer.Option(None, help="override the suite's device policy: auto, cpu or cuda"),
    strict: bool = typer.Option(False, "--strict", help="exit 1 if any run failed (for CI)"),
    plugin_module: list[str] = typer.Option([], "--plugin-module", help="extra module to load as a plugin"),
) -> None:
    """Run a suite; resumes where a previous run of the same suite stopped."""
    from otbench.env import resolve_device
    from otbench.executors import InProcessExecutor, ProcessPoolExecutor
    from otbench.report import write_report
    from otbench.store import ResultStore, StoreLocked
    from otbench.suite import plan_runs

    registry = _registry(plugin_module)
    suite = _load_and_validate(suite_path, registry)
    try:
        dev = resolve_device(device or suite.device)
    except (RuntimeError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_INVALID) from None
    specs = plan_runs(suite, registry, dev.type)
    if not specs:
        console.print(f"[red]error:[/] {suite_path}: the suite expands to no runs on {dev.type}")
        raise typer.Exit(EXIT_INVALID)
    directory = results_dir or Path("results") / suite.name / dev.type
    try:
        with ResultStore(directory) as store:
            shutil.copyfile(suite_path, directory / "suite.yaml")
            done = set() if force else store.done_keys()
            todo = [s for s in specs if s.key not in done]
            console.print(f"{suite.name}: {len(specs)} runs on {dev} "
                          f"(budget {specs[0].budget}); {len(specs) - len(todo)} already done, {len(todo)} to run "
                          f"-> {directory}")
            counts = {"ok": 0, "failed": 0, "skipped": 0}
            executor = ProcessPoolExecutor(jobs) if jobs > 1 else InProcessExecutor(registry)
            interrupted = False
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("ok {task.fields[ok]} failed {task.fields[failed]} skipped {task.fields[skipped]}"),
                          TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                          disable=not todo) as progress:
                bar = progress.add_task(suite.name, total=len(todo), **counts)

                def on_record(record: dict) -> None:
                    store.append(record)
                    status = record.get("status", "failed")
                    counts[status] = counts.get(status, 0) + 1
                    if status == "failed":
                        progress.console.print(f"[red]failed:[/] {record['task_label']} / {record['solver_label']} "
                                               f"/ seed {record['seed']}: {str(record.get('error'))[:200]}",
                                               markup=True, highlight=False)
                    progress.update(bar, advance=1, **counts)

                try:
                    executor.run(todo, on_record)
                except KeyboardInterrupt:
                    interrupted = True
            csv_path, md_path, board = write_report(directory)
    except StoreLocked as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_INVALID) from None
    _print_board(board)
    console.print(f"leaderboard: {csv_path}\nsummary: {md_path}")
    if interrupted:
        console.print(f"[yellow]interrupted:[/] {sum(counts.values())} runs finished in this session are saved; "
                      "run the same command again to resume.")
        raise typer.Exit(EXIT_INTERRUPTED)
    if counts["failed"]:
        console.print(f"[yellow]{counts['failed']} run(s) failed[/]; see {md_path}")
        if strict:
            raise typer.Exit(EXIT_STRICT_FAILURE)


def _print_board(board) -> None:
    if board.empty:
        return
    table = Table(title="leaderboard (primary metric, mean over seeds)")
    for col in ("task", "rank", "solver", "seeds", "failed", "primary", "value", "seconds"):
        table.add_column(col)
    for _, r in board.iterrows():
        metric = r["primary_metric"]
        value = r.get(f"{metric}_mean")
        secs = r.get("seconds_mean")
        table.add_row(f"{r['task_label']} {r['task_config']}", "" if r["rank"] is None or str(r["rank"]) == "<NA>" else str(r["rank"]),
                      f"{r['solver_label']} {r['solver_config']}", str(r["n_seeds"]), str(r["n_failed"]), str(metric),
                      "" if value is None or value != value else f"{value:.4g}",
                      "" if secs is None or secs != secs else f"{secs:.2f}")
    out.print(table)


@app.command("list")
def list_components(what: Optional[str] = typer.Argument(None, help="solvers, tasks or metrics (default all)")) -> None:
    """List solvers, tasks and metrics with the plugin each comes from."""
    registry = _registry()
    sections = {"solvers": registry.solvers, "tasks": registry.tasks, "metrics": registry.metrics}
    if what is not None and what not in sections:
        console.print(f"[red]error:[/] expected one of {sorted(sections)}, got {what!r}")
        raise typer.Exit(EXIT_INVALID)
    for name, table_data in sections.items():
        if what and name != what:
            continue
        table = Table(title=name)
        for col in ("name", "plugin", "description"):
            table.add_column(col)
        for key, entry in sorted(table_data.items()):
            table.add_row(key, entry.plugin, entry.cls.describe())
        out.print(table)


@app.command()
def plugins() -> None:
    """Show loaded plugins (with versions) and plugins that failed to load."""
    registry = _registry()
    table = Table(title="plugins")
    for col in ("plugin", "distribution", "version", "status"):
        table.add_column(col)
    for name, (dist, version) in sorted(registry.plugins.items()):
        table.add_row(name, dist or "", version or "", "loaded")
    for failure in registry.failures:
        table.add_row(failure.plugin, "", "", f"FAILED: {failure.error}")
    out.print(table)


@app.command("new-plugin")
def new_plugin(name: str = typer.Argument(..., help="distribution name, e.g. otbench-my-solver"),
               directory: Path = typer.Option(Path("."), "--dir", help="where to create the package")) -> None:
    """Create a working, installable plugin package (a solver, a conformance test, a README)."""
    from otbench.scaffold import new_plugin as scaffold

    try:
        root = scaffold(name, directory)
    except (ValueError, FileExistsError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_INVALID) from None
    out.print(f"created {root}: pip install -e {root} && pytest {root}")


@app.command()
def report(directory: Path = typer.Argument(..., help="a results directory"),
           suite_path: Optional[Path] = typer.Option(None, "--suite", help="keep only the runs this suite plans now"),
           out_dir: Optional[Path] = typer.Option(None, "--out", help="write the report here instead")) -> None:
    """Rebuild leaderboard.csv and summary.md from the records in DIRECTORY (partial runs too)."""
    from otbench.report import write_report
    from otbench.store import RECORDS_FILE
    from otbench.suite import plan_runs

    if not (directory / RECORDS_FILE).exists():
        console.print(f"[red]error:[/] {directory} has no {RECORDS_FILE}")
        raise typer.Exit(EXIT_INVALID)
    keys = None
    if suite_path is not None:
        registry = _registry()
        suite = _load_and_validate(suite_path, registry)
        keys = {spec.key for dev in ("cpu", "cuda") for spec in plan_runs(suite, registry, dev)}
    csv_path, md_path, board = write_report(directory, keys=keys, out_dir=out_dir)
    _print_board(board)
    console.print(f"leaderboard: {csv_path}\nsummary: {md_path}")


if __name__ == "__main__":  # pragma: no cover
    app()
