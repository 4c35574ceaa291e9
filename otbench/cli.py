"""The ``otbench`` command line: run, validate, list, show, plugins, report, new-plugin.

Exit codes: 0 success (failed runs are reported, not fatal, unless ``--strict``); 1 failed runs with
``--strict``; 2 invalid suite or usage; 3 the results directory cannot be used (not writable, not a folder,
disk full); 130 interrupted by Ctrl-C or SIGTERM (finished runs are saved; rerun to resume).
"""

from __future__ import annotations

import os
import signal
import shutil
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="otbench: benchmark optimal-transport solvers on tasks with known answers.")
#: off a terminal (a pipe, a file, CI) rich would cut tables at 80 columns; print them whole instead
WIDE = 240
console = Console(stderr=True, width=None if os.isatty(2) else WIDE)
out = Console(width=None if os.isatty(1) else WIDE)

EXIT_STRICT_FAILURE, EXIT_INVALID, EXIT_IO, EXIT_INTERRUPTED = 1, 2, 3, 130

PLUGIN_OPTION = typer.Option([], "--plugin-module",
                             help="extra plugin module: an importable name, a module in the current folder, "
                                  "or a path to a .py file (repeatable)")
MAX_RUNS_OPTION = typer.Option(None, "--max-runs", min=1,
                               help="refuse suites that expand to more runs than this (default 100000)")


def error(message: str) -> None:
    """Print ``error: message`` in red; the message is printed as it is (no rich markup in it)."""
    console.print(f"[red]error:[/] {escape(str(message))}", highlight=False)


def warning(message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)


def _registry(plugin_modules: list[str] | None = None):
    from otbench.registry import PLUGIN_MODULES_ENV, get_registry, resolve_plugin_module

    if plugin_modules:
        try:
            resolved = [resolve_plugin_module(m) for m in plugin_modules]
        except FileNotFoundError as exc:
            error(str(exc))
            raise typer.Exit(EXIT_INVALID) from None
        current = [m for m in os.environ.get(PLUGIN_MODULES_ENV, "").split(",") if m]
        os.environ[PLUGIN_MODULES_ENV] = ",".join(dict.fromkeys(current + resolved))
    registry = get_registry(refresh=bool(plugin_modules))
    for failure in registry.failures:
        warning(f"plugin {failure.plugin!r} failed to load: {failure.error}")
    return registry


def _max_runs(value: int | None) -> int:
    from otbench.suite import DEFAULT_MAX_RUNS

    return value if value is not None else DEFAULT_MAX_RUNS


def _load_and_validate(suite_path: Path, registry, max_runs: int | None = None, construct: bool = True):
    """Load and validate a suite (exit 2 with the problems if invalid). ``construct=False`` checks the
    components' declarations only, importing no plugin (see ``validate --deep``)."""
    from otbench.suite import SuiteError, load_suite, validate_suite

    try:
        suite = load_suite(suite_path)
        validate_suite(suite, registry, suite_path, max_runs=_max_runs(max_runs), construct=construct)
    except SuiteError as exc:
        error(str(exc))
        raise typer.Exit(EXIT_INVALID) from None
    return suite


@app.command()
def validate(suite_path: Path = typer.Argument(..., help="suite YAML file"),
             device: Optional[str] = typer.Option(None, help="plan for this device type: cpu or cuda"),
             plugin_module: list[str] = PLUGIN_OPTION,
             max_runs: Optional[int] = MAX_RUNS_OPTION,
             deep: bool = typer.Option(False, "--deep",
                                       help="also construct each distinct configuration once, so that checks a "
                                            "plugin makes in its __init__ run too (imports the plugins: seconds); "
                                            "`run` always does this")) -> None:
    """Check a suite (schema, names, parameters, budgets) and count its runs, without running any solver.

    By default it reads the components' declarations (defaults, parameter rules, capabilities) and imports no
    plugin, so it answers at once; --deep also constructs every configuration, as `run` does before running.
    """
    from otbench.suite import count_runs

    if device is not None and device not in ("cpu", "cuda"):
        error(f"--device must be cpu or cuda, got {device!r}")
        raise typer.Exit(EXIT_INVALID)
    registry = _registry(plugin_module)
    suite = _load_and_validate(suite_path, registry, max_runs, construct=deep)  # this plans both budgets
    for dev in [device] if device else ["cpu", "cuda"]:
        runs = count_runs(suite, dev)  # what plan_runs would make, without making them again
        out.print(escape(f"{suite_path}: valid; {runs} runs on {dev} "
                         f"({len(suite.tasks)} task entries, {len(suite.solvers)} solver entries)"), highlight=False)
        if not runs:
            error(f"{suite_path}: the {dev} budget expands to no runs")
            raise typer.Exit(EXIT_INVALID)
    if not deep:
        console.print("checked against the declared parameters; --deep also constructs each configuration "
                      "(the plugins' own __init__ checks)", highlight=False)


def _stale(specs: list, latest: dict[str, dict]) -> list:
    """Specs whose done record was made by other plugin source code than the one loaded now."""
    stale = []
    for spec in specs:
        rec = latest.get(spec.key)
        if rec is not None and rec.get("status") in ("ok", "skipped") and rec.get("code_hash") \
                and spec.code_hash and rec["code_hash"] != spec.code_hash:
            stale.append(spec)
    return stale


def _outgrown(specs: list, latest: dict[str, dict]) -> list[tuple[object, str]]:
    """Done runs whose record no longer answers the suite: it lacks a metric the suite now asks for, or it took
    longer than the suite's timeout now allows. Neither is in the run key, so they are checked here."""
    out = []
    for spec in specs:
        rec = latest.get(spec.key)
        if rec is None or rec.get("status") != "ok":
            continue
        asked_then = rec.get("requested_metrics")
        if spec.metrics is not None and asked_then is not None and not set(spec.metrics) <= set(asked_then):
            out.append((spec, f"metrics {sorted(set(spec.metrics) - set(asked_then))} were not computed"))
        elif isinstance(rec.get("seconds"), (int, float)) and rec["seconds"] > spec.timeout:
            out.append((spec, f"it took {rec['seconds']:.3g} s, over the timeout of {spec.timeout:g} s"))
    return out


def _changed_parts(specs: list, latest: dict[str, dict]) -> str:
    names = set()
    for spec in specs:
        old = dict(p.split(":", 1) for p in str(latest[spec.key].get("code_hash", "")).split() if ":" in p)
        new = dict(p.split(":", 1) for p in spec.code_hash.split() if ":" in p)
        if old.get("task") != new.get("task"):
            names.add(f"task {spec.task!r}")
        if old.get("solver") != new.get("solver"):
            names.add(f"solver {spec.solver!r}")
    return ", ".join(sorted(names))


@app.command()
def run(
    suite_path: Path = typer.Argument(..., help="suite YAML file"),
    results_dir: Optional[Path] = typer.Option(None, "--results-dir", help="default: results/<suite>/<device>"),
    jobs: str = typer.Option("auto", "--jobs", "-j",
                             help="runs at once: auto (from the cores and each solver's threads: one worker per core "
                                  "for single-thread solvers) or N (1 = in-process; N > 1 = N worker processes; "
                                  "with Ray: at most N tasks in flight)"),
    executor_name: str = typer.Option("auto", "--executor",
                                      help="auto, inprocess, process or ray (Ray: pip install -e '.\\[ray]')"),
    address: Optional[str] = typer.Option(None, "--address",
                                          help="run on this Ray cluster (ray://HOST:10001, HOST:6379 or auto); "
                                               "implies --executor ray"),
    gpu_share: Optional[float] = typer.Option(None, "--gpu-share",
                                              help="Ray: GPUs each CUDA run asks for (0.25 = four runs per GPU); "
                                                   "default: each solver's declared gpu_share"),
    force: bool = typer.Option(False, "--force", help="rerun every run, done or failed"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="rerun the runs that failed before"),
    keep_stale: bool = typer.Option(False, "--keep-stale",
                                    help="keep results made by older source code of a plugin instead of rerunning"),
    device: Optional[str] = typer.Option(None, help="override the suite's device policy: auto, cpu or cuda"),
    strict: bool = typer.Option(False, "--strict", help="exit 1 if any run failed (for CI)"),
    plugin_module: list[str] = PLUGIN_OPTION,
    max_runs: Optional[int] = MAX_RUNS_OPTION,
) -> None:
    """Run a suite; resumes where a previous run of the same suite stopped.

    Done runs are kept; failed runs are kept too unless --retry-failed (or --force) is given; a run whose
    plugin source code changed since its record was made is rerun (unless --keep-stale).
    """
    from otbench.env import resolve_device
    from otbench.executors import choose_executor, parse_jobs
    from otbench.executors_ray import RayUnavailable, cluster_device
    from otbench.report import write_report
    from otbench.runner import base_record
    from otbench.store import ResultStore, StoreError, StoreLocked
    from otbench.suite import plan_runs

    registry = _registry(plugin_module)
    suite = _load_and_validate(suite_path, registry, max_runs)
    try:
        import torch

        # a suite sent to a Ray cluster runs where the cluster's GPUs are, even from a driver without one
        on_cluster = (executor_name == "ray" or address is not None) and not torch.cuda.is_available()
        remote = cluster_device(device or suite.device, address) if on_cluster else None
        dev = torch.device(remote) if remote else resolve_device(device or suite.device)
    except (RuntimeError, ValueError, ImportError) as exc:
        error(str(exc))
        raise typer.Exit(EXIT_INVALID) from None
    specs = plan_runs(suite, registry, dev.type, max_runs=_max_runs(max_runs))
    if not specs:
        error(f"{suite_path}: the suite expands to no runs on {dev.type}")
        raise typer.Exit(EXIT_INVALID)
    try:  # check the executor options (and that Ray is installed) before touching the results directory
        n_jobs = parse_jobs(jobs)
        choose_executor(specs, registry, executor_name, n_jobs, address, gpu_share)
    except (ValueError, ImportError) as exc:
        error(str(exc))
        raise typer.Exit(EXIT_INVALID) from None
    directory = results_dir or Path("results") / suite.name / dev.type
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    interrupted = False
    previous_term = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:  # SIGTERM stops a suite exactly like Ctrl-C
        raise KeyboardInterrupt

    try:
        with ResultStore(directory) as store:
            try:
                shutil.copyfile(suite_path, directory / "suite.yaml")
            except OSError as exc:
                raise StoreError(f"cannot write {directory / 'suite.yaml'}: {exc.strerror}") from None
            for rec in store.recover_died_runs():
                warning(f"{rec.get('task_label')} / {rec.get('solver_label')} / seed {rec.get('seed')}: the process "
                        "died during this run last time (killed, out of memory or a native crash); recorded as "
                        "failed. Pass --retry-failed to try it again.")
            latest = store.latest()
            if store.problems:
                warning(store.problems.describe(store.path))
            stale = [] if force or keep_stale else _stale(specs, latest)
            if stale:
                warning(f"{len(stale)} finished run(s) were made with other source code of {_changed_parts(stale, latest)} "
                        "(the plugin changed since); rerunning them (pass --keep-stale to keep the old results, "
                        "and bump the component's `version` when a change should be recorded as a new version)")
            outgrown = [] if force else _outgrown(specs, latest)
            if outgrown:
                spec0, why0 = outgrown[0]
                warning(f"{len(outgrown)} finished run(s) no longer answer the suite (e.g. {spec0.task_label} / "
                        f"{spec0.solver_label} / seed {spec0.seed}: {why0}); rerunning them")
            statuses = {k: r.get("status") for k, r in latest.items()}
            keep = set() if force else {"ok", "skipped"} | (set() if retry_failed else {"failed"})
            stale_keys = {s.key for s in stale} | {s.key for s, _ in outgrown}
            todo = [s for s in specs if statuses.get(s.key) not in keep or s.key in stale_keys]
            todo_keys = {s.key for s in todo}
            n_failed_kept = sum(1 for s in specs if statuses.get(s.key) == "failed" and s.key not in todo_keys)
            executor, how = choose_executor(todo, registry, executor_name, n_jobs, address, gpu_share) if todo \
                else (None, "")
            console.print(f"{escape(suite.name)}: {len(specs)} runs on {dev} "
                          f"(budget {specs[0].budget}); {len(specs) - len(todo)} already done, {len(todo)} to run "
                          f"-> {escape(str(directory))}" + (f"; executor: {escape(how)}" if todo else ""),
                          highlight=False)
            if n_failed_kept:
                console.print(f"{n_failed_kept} of the done runs failed before; pass --retry-failed to run them again",
                              highlight=False)
            signal.signal(signal.SIGTERM, on_term)
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("ok {task.fields[ok]} failed {task.fields[failed]} skipped {task.fields[skipped]}"),
                          TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                          disable=not todo) as progress:
                bar = progress.add_task(escape(suite.name), total=len(todo), **counts)
                warned: set[str] = set()

                def on_start(spec, attempt: str) -> None:
                    store.mark_started(base_record(spec, attempt))

                def on_record(record: dict) -> None:
                    store.append(record)
                    status = record.get("status", "failed")
                    counts[status] = counts.get(status, 0) + 1
                    if status == "failed":
                        progress.console.print(
                            f"[red]failed:[/] {escape(str(record['task_label']))} / {escape(str(record['solver_label']))} "
                            f"/ seed {record['seed']}: {escape(str(record.get('error'))[:200])}", highlight=False)
                    for text in record.get("warnings") or []:
                        if (record["solver"], text) not in warned:
                            warned.add((record["solver"], text))
                            progress.console.print(f"[yellow]warning:[/] {escape(record['solver'])}: {escape(text)}",
                                                   highlight=False)
                    progress.update(bar, advance=1, **counts)

                try:
                    if executor is not None:
                        executor.run(todo, on_record, on_start)
                except KeyboardInterrupt:
                    interrupted = True
                except RayUnavailable as exc:
                    error(str(exc))
                    raise typer.Exit(EXIT_INVALID) from None
            signal.signal(signal.SIGTERM, previous_term)
            store.clear_started()  # every run of this session ended (or was stopped cleanly): none died
            try:
                notes: list[str] = []
                csv_path, md_path, board = write_report(directory, notes=notes, html=True)
                early = store.problems.describe(store.path) if store.problems else None
                for note in notes:
                    if note != early:  # the skipped-lines warning was already printed before the runs
                        warning(note)
            except OSError as exc:
                raise StoreError(f"cannot write the report in {directory}: {exc.strerror or exc}") from None
    except StoreLocked as exc:
        error(str(exc))
        raise typer.Exit(EXIT_INVALID) from None
    except StoreError as exc:
        ResultStore(directory).clear_started()  # the run in flight was not killed: do not record it as died
        finished = sum(counts.values())
        error(f"{exc}" + (f"; the {finished} run(s) recorded before this in this session are saved" if finished else
                          "; no run was computed"))
        raise typer.Exit(EXIT_IO) from None
    finally:
        signal.signal(signal.SIGTERM, previous_term)
    _print_board(board)
    console.print(f"leaderboard: {escape(str(csv_path))}\nsummary: {escape(str(md_path))}"
                  + _html_line(csv_path.parent), highlight=False)
    if interrupted:
        console.print(f"[yellow]interrupted:[/] {sum(counts.values())} runs finished in this session are saved; "
                      "run the same command again to resume.")
        raise typer.Exit(EXIT_INTERRUPTED)
    if counts["failed"]:
        console.print(f"[yellow]{counts['failed']} run(s) failed[/]; see {escape(str(md_path))}")
        if strict:
            raise typer.Exit(EXIT_STRICT_FAILURE)
    elif strict and any(r.get("status") == "failed" for r in _latest_of(directory, specs)):
        console.print("[yellow]runs failed in an earlier session[/] (pass --retry-failed to rerun them)")
        raise typer.Exit(EXIT_STRICT_FAILURE)


def _latest_of(directory: Path, specs: list) -> list[dict]:
    from otbench.store import ResultStore

    latest = ResultStore(directory).latest()
    return [latest[s.key] for s in specs if s.key in latest]


def _print_board(board) -> None:
    if board.empty:
        return
    table = Table(title="leaderboard (primary metric, mean over seeds)")
    for col in ("task", "rank", "solver", "seeds", "failed", "primary", "value", "seconds"):
        table.add_column(col, overflow="fold")
    for _, r in board.iterrows():
        metric = r["primary_metric"]
        value = r.get(f"{metric}_mean")
        secs = r.get("seconds_mean")
        table.add_row(escape(f"{r['task_label']} {r['task_config']}"),
                      "" if r["rank"] is None or str(r["rank"]) == "<NA>" else str(r["rank"]),
                      escape(f"{r['solver_label']} {r['solver_config']}"), str(r["n_seeds"]), str(r["n_failed"]),
                      escape(str(metric)), "" if value is None or value != value else f"{value:.4g}",
                      "" if secs is None or secs != secs else f"{secs:.2f}")
    out.print(table)


def _metric_needs(cls: type) -> str:
    parts = []
    if cls.needs:
        parts.append("solution: " + ", ".join(sorted(cls.needs)))
    if cls.truth_needs:
        from otbench.api import Truth
        import dataclasses

        fields = {f.name for f in dataclasses.fields(Truth)}
        plain = sorted(n for n in cls.truth_needs if n in fields)
        extra = sorted(n for n in cls.truth_needs if n not in fields)
        if plain:
            parts.append("truth: " + ", ".join(plain))
        if extra:
            parts.append("Truth.extra: " + ", ".join(extra))
    if set(cls.kinds) != set(__import__("otbench.api", fromlist=["PROBLEM_KINDS"]).PROBLEM_KINDS):
        parts.append("kinds: " + ", ".join(sorted(cls.kinds)))
    return "; ".join(parts)


@app.command("list")
def list_components(what: Optional[str] = typer.Argument(None, help="solvers, tasks or metrics (default all)"),
                    plugin_module: list[str] = PLUGIN_OPTION) -> None:
    """List solvers, tasks and metrics with the plugin each comes from (metrics: what they need).

    ``otbench show NAME`` prints one component in full: parameters with defaults, docstring, needs.
    """
    registry = _registry(plugin_module)
    sections = {"solvers": registry.solvers, "tasks": registry.tasks, "metrics": registry.metrics}
    if what is not None and what not in sections:
        error(f"expected one of {sorted(sections)}, got {what!r}")
        raise typer.Exit(EXIT_INVALID)
    for name, table_data in sections.items():
        if what and name != what:
            continue
        table = Table(title=name)
        cols = ("name", "plugin", "needs", "description") if name == "metrics" else ("name", "plugin", "description")
        for col in cols:
            table.add_column(col, overflow="fold")
        for key, entry in sorted(table_data.items()):
            row = [key, entry.plugin, entry.info.describe()]  # declarations: no plugin is imported
            if name == "metrics":
                row.insert(2, _metric_needs(entry.info))
            table.add_row(*(escape(str(c)) for c in row))
        out.print(table)


def describe_component(registry, name: str) -> str | None:
    """Everything a suite author needs about one solver, task or metric, as plain text (None if unknown)."""
    import inspect

    from otbench.suite import param_rules

    found = [(kind, table[name]) for kind, table in (("solver", registry.solvers), ("task", registry.tasks),
                                                      ("metric", registry.metrics)) if name in table]
    if not found:
        return None
    blocks = []
    for kind, entry in found:
        cls = entry.info  # the class, or its declaration while the plugin is not imported
        version = f"; version {cls.version!r}" if getattr(cls, "version", None) else ""
        lines = [f"{kind} {name}  (plugin {entry.plugin}; class {entry.class_path}{version})", ""]
        lines += [inspect.cleandoc(entry.doc or "(no docstring)"), ""]
        if kind == "metric":
            lines.append(f"needs: {_metric_needs(cls) or 'nothing'}")
            lines.append("outputs: " + ", ".join(f"{k} ({v})" for k, v in dict(cls.outputs).items()))
        else:
            if kind == "solver":
                lines.append(f"kinds: {sorted(cls.kinds)}; costs: {sorted(cls.costs) if cls.costs else 'any'}; "
                             f"inputs: {cls.inputs}; provides: {sorted(cls.provides)}")
                for k, parts in dict(cls.provides_by_kind).items():
                    lines.append(f"  provides on {k}: {sorted(parts)}")
            else:
                lines.append(f"kind: {cls.kind}; primary metric: {cls.primary_metric[0]} ({cls.primary_metric[1]})")
            rules = param_rules(cls)
            lines.append("parameters (name = default  [check]):" if cls.defaults else "parameters: none")
            for pname, default in dict(cls.defaults).items():
                rule = {k: v for k, v in rules.get(pname, {}).items() if not (k == "type" and v == "any")}
                shown = ", ".join(f"{k} {v}" for k, v in rule.items())
                lines.append(f"  {pname} = {default!r}" + (f"  [{shown}]" if shown else ""))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


@app.command()
def show(name: str = typer.Argument(..., help="a solver, task or metric name"),
         plugin_module: list[str] = PLUGIN_OPTION) -> None:
    """Show one solver, task or metric: docstring, parameters with defaults and checks, capabilities, needs."""
    from otbench.registry import suggest

    registry = _registry(plugin_module)
    text = describe_component(registry, name)
    if text is None:
        known = sorted({*registry.solvers, *registry.tasks, *registry.metrics})
        error(f"no solver, task or metric named {name!r}{suggest(name, known)}; `otbench list` shows them all")
        raise typer.Exit(EXIT_INVALID)
    out.print(text, markup=False, highlight=False)


@app.command()
def plugins(plugin_module: list[str] = PLUGIN_OPTION,
            import_all: bool = typer.Option(False, "--import",
                                            help="import every plugin now, to report those that fail to import"),
            write_manifest: bool = typer.Option(False, "--write-manifest",
                                                help="regenerate the built-in plugins' declaration manifest "
                                                     "(otbench_plugins/_manifest.json) and exit")) -> None:
    """Show plugins (with versions) and plugins that failed to load.

    A plugin whose declaration record is up to date is registered without being imported (status
    "declared"); it is imported on first use of one of its classes. --import imports them all now.
    """
    if write_manifest:
        from otbench.registry import write_builtin_manifest

        try:
            path = write_builtin_manifest()
        except Exception as exc:  # noqa: BLE001 - a plugin that fails to import: say which
            error(f"cannot write the built-in manifest: {type(exc).__name__}: {exc}")
            raise typer.Exit(EXIT_INVALID) from None
        out.print(escape(f"wrote {path}"), highlight=False)
        return
    registry = _registry(plugin_module)
    if import_all:
        n_failed = len(registry.failures)
        registry.load_all()
        for failure in registry.failures[n_failed:]:
            warning(f"plugin {failure.plugin!r} failed to load: {failure.error}")
    table = Table(title="plugins")
    for col in ("plugin", "distribution", "version", "status"):
        table.add_column(col, overflow="fold")
    for name, (dist, version) in sorted(registry.plugins.items()):
        loader = registry.loaders.get(name)
        status = "loaded" if registry.imported(name) else "failed" if loader.error else "declared"
        table.add_row(escape(name), escape(dist or ""), escape(version or ""), status)
    for failure in registry.failures:
        table.add_row(escape(failure.plugin), "", "", escape(f"FAILED: {failure.error}"))
    out.print(table)


@app.command("new-plugin")
def new_plugin(name: str = typer.Argument(..., help="distribution name, e.g. otbench-my-solver"),
               directory: Path = typer.Option(Path("."), "--dir", help="where to create the package")) -> None:
    """Create a working, installable plugin package (a solver, a task, conformance tests, a README)."""
    from otbench.scaffold import new_plugin as scaffold

    try:
        root = scaffold(name, directory)
    except (ValueError, FileExistsError, OSError) as exc:
        error(str(exc))
        raise typer.Exit(EXIT_INVALID) from None
    out.print(escape(f"created {root}: pip install -e {root} && pytest {root}"), highlight=False)


def _html_line(directory: Path) -> str:
    """An ``html: PATH`` line when the report page exists (a failure to make it was already warned about)."""
    from otbench.report import HTML_FILE

    page = directory / HTML_FILE
    return f"\nhtml: {escape(str(page))}" if page.exists() else ""


@app.command()
def report(directory: Path = typer.Argument(..., help="a results directory"),
           suite_path: Optional[Path] = typer.Option(None, "--suite", help="keep only the runs this suite plans now"),
           out_dir: Optional[Path] = typer.Option(None, "--out", help="write the report here instead"),
           html: bool = typer.Option(False, "--html", help="also write report.html: one self-contained offline "
                                     "page (pivot tables, plots, leaderboard; `run` writes it by default)"),
           plugin_module: list[str] = PLUGIN_OPTION,
           max_runs: Optional[int] = MAX_RUNS_OPTION) -> None:
    """Rebuild leaderboard.csv and summary.md (and report.html with --html) from the records in DIRECTORY
    (partial runs too).

    Records of different code versions of a task or solver are kept in separate rows, never averaged.
    """
    from otbench.report import write_report
    from otbench.store import RECORDS_FILE
    from otbench.suite import plan_runs

    records_path = directory / RECORDS_FILE
    if not records_path.exists():
        error(f"{directory} has no {RECORDS_FILE}")
        raise typer.Exit(EXIT_INVALID)
    if not records_path.is_file():
        error(f"{records_path} is not a regular file")
        raise typer.Exit(EXIT_IO)
    keys = None
    if suite_path is not None:
        registry = _registry(plugin_module)
        suite = _load_and_validate(suite_path, registry, max_runs)
        keys = {spec.key for dev in ("cpu", "cuda") for spec in plan_runs(suite, registry, dev,
                                                                          max_runs=_max_runs(max_runs))}
    notes: list[str] = []
    try:
        csv_path, md_path, board = write_report(directory, keys=keys, out_dir=out_dir, notes=notes, html=html)
    except OSError as exc:
        error(f"cannot write the report to {out_dir or directory}: {exc.strerror or exc}; "
              "pass --out DIR to write it elsewhere")
        raise typer.Exit(EXIT_IO) from None
    for note in notes:
        warning(note)
    _print_board(board)
    console.print(f"leaderboard: {escape(str(csv_path))}\nsummary: {escape(str(md_path))}"
                  + (_html_line(csv_path.parent) if html else ""), highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
