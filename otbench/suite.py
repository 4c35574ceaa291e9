"""YAML suites: schema, validation with precise messages, per-device budgets and grid expansion into runs.

Every error names the file, the key path inside it and what was expected, and suggests the nearest known
name for an unknown solver, task, metric or parameter.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from otbench.registry import Registry, suggest

__all__ = ["SuiteError", "Suite", "RunSpec", "load_suite", "plan_runs", "run_key"]


class SuiteError(ValueError):
    """An invalid suite; the message names the file, the key path and what was expected."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentSpec(_Strict):
    """A task or solver entry: registry ``name``, optional ``label``, fixed ``params`` and a ``grid``."""

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.label or self.name


class Override(_Strict):
    """A budget's change to one entry: ``params`` merge, ``grid`` axes replace."""

    params: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)


class Budget(_Strict):
    """What changes on one device: seeds, timeout, and per-label task/solver overrides."""

    description: str = ""
    seeds: list[int] | None = None
    timeout: float | None = Field(default=None, gt=0)
    tasks: dict[str, Override] = Field(default_factory=dict)
    solvers: dict[str, Override] = Field(default_factory=dict)


class Suite(_Strict):
    name: str
    description: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    timeout: float = Field(default=600.0, gt=0)
    threads: int | Literal["auto"] = "auto"
    metrics: list[str] | None = None
    tasks: list[ComponentSpec] = Field(min_length=1)
    solvers: list[ComponentSpec] = Field(min_length=1)
    budgets: dict[Literal["cpu", "cuda"], Budget] = Field(default_factory=dict)

    @field_validator("threads")
    @classmethod
    def _positive_threads(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("threads must be >= 1 or 'auto'")
        return v


@dataclass(frozen=True)
class RunSpec:
    """One cell of a suite: (task configuration, solver configuration, seed) and how to run it."""

    suite: str
    task: str
    task_label: str
    task_params: dict[str, Any]
    solver: str
    solver_label: str
    solver_params: dict[str, Any]
    seed: int
    device: str
    dtype: str
    timeout: float
    threads: int | str
    metrics: tuple[str, ...] | None
    budget: str
    code_version: str
    key: str = field(default="")


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<top level>"


def _describe_pydantic(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid suite"]
    for e in err.errors():
        loc, kind = e["loc"], e["type"]
        if kind == "extra_forbidden":
            parent = loc[:-1]
            allowed = _allowed_keys(parent)
            hint = suggest(str(loc[-1]), allowed)
            lines.append(f"  - {_where(loc)}: unknown key{hint}; expected one of {allowed}")
        elif kind == "missing":
            lines.append(f"  - {_where(loc)}: required key is missing")
        else:
            got = e.get("input")
            lines.append(f"  - {_where(loc)}: {e['msg']} (got {got!r})")
    return "\n".join(lines)


def _allowed_keys(parent: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Suite
    if parent and parent[0] in ("tasks", "solvers") and len(parent) >= 2:
        model = ComponentSpec
    elif parent and parent[0] == "budgets":
        model = Budget if len(parent) == 2 else Override
    return sorted(model.model_fields)


def load_suite(path: str | Path) -> Suite:
    """Parse and schema-check a suite file (no registry needed)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read suite file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SuiteError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: a suite must be a YAML mapping with keys tasks, solvers, ...; got {type(data).__name__}")
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(_describe_pydantic(path, exc)) from None


def _check_component(path: Path, loc: str, spec: ComponentSpec | Override, defaults: dict[str, Any],
                     what: str, problems: list[str]) -> None:
    for section in ("params", "grid"):
        for key in getattr(spec, section):
            if key not in defaults:
                problems.append(f"  - {loc}.{section}.{key}: unknown {what} parameter{suggest(key, sorted(defaults))}; "
                                f"expected one of {sorted(defaults)}")
    for key, values in spec.grid.items():
        if len(values) == 0:
            problems.append(f"  - {loc}.grid.{key}: an empty list expands to no runs; expected at least one value")


def validate_suite(suite: Suite, registry: Registry, path: str | Path = "<suite>") -> None:
    """Check names, parameters, labels and budgets against the registry; raise SuiteError listing all problems."""
    path = Path(path)
    problems: list[str] = []
    for section, table, what in (("tasks", registry.tasks, "task"), ("solvers", registry.solvers, "solver")):
        seen: set[str] = set()
        for i, spec in enumerate(getattr(suite, section)):
            loc = f"{section}[{i}]"
            if spec.name not in table:
                problems.append(f"  - {loc}.name: unknown {what} {spec.name!r}{suggest(spec.name, sorted(table))}; "
                                f"known: {sorted(table)}")
            else:
                _check_component(path, loc, spec, dict(table[spec.name].cls.defaults), what, problems)
            if spec.key in seen:
                problems.append(f"  - {loc}: duplicate label {spec.key!r}; give each entry a unique 'label'")
            seen.add(spec.key)
    for i, metric in enumerate(suite.metrics or []):
        if metric not in registry.metrics:
            problems.append(f"  - metrics[{i}]: unknown metric {metric!r}{suggest(metric, sorted(registry.metrics))}; "
                            f"known: {sorted(registry.metrics)}")
    for device, budget in suite.budgets.items():
        for section, table in (("tasks", registry.tasks), ("solvers", registry.solvers)):
            entries = {s.key: s for s in getattr(suite, section)}
            for label, override in getattr(budget, section).items():
                loc = f"budgets.{device}.{section}.{label}"
                if label not in entries:
                    problems.append(f"  - {loc}: no {section[:-1]} labelled {label!r}{suggest(label, sorted(entries))}")
                elif entries[label].name in table:
                    _check_component(path, loc, override, dict(table[entries[label].name].cls.defaults),
                                     section[:-1], problems)
    if problems:
        raise SuiteError(f"{path}: invalid suite\n" + "\n".join(problems))


def _expand(spec: ComponentSpec, override: Override | None) -> list[dict[str, Any]]:
    params = dict(spec.params)
    grid = dict(spec.grid)
    if override is not None:
        params.update(override.params)
        for k in override.params:  # a budget's fixed value wins over the base grid axis
            grid.pop(k, None)
        grid.update(override.grid)
    for k in grid:
        params.pop(k, None)
    keys = sorted(grid)
    return [{**params, **dict(zip(keys, combo))} for combo in itertools.product(*(grid[k] for k in keys))]


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def run_key(spec: RunSpec) -> str:
    """Content key of a run: task, solver, parameters, seed, dtype, device type and code version."""
    payload = {
        "task": spec.task, "task_params": spec.task_params, "solver": spec.solver,
        "solver_params": spec.solver_params, "seed": spec.seed, "dtype": spec.dtype,
        "device": spec.device, "code": spec.code_version,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:20]


def _code_version(registry: Registry, task: str, solver: str) -> str:
    import otbench

    t, s = registry.task(task), registry.solver(solver)
    return canonical_json([otbench.__version__, t.version, t.cls.version, s.version, s.cls.version])


def budget_name(device_type: str) -> str:
    return "cuda" if device_type == "cuda" else "cpu"


def plan_runs(suite: Suite, registry: Registry, device_type: str) -> list[RunSpec]:
    """Expand the suite into runs for a device type (``cpu`` or ``cuda``), applying that device's budget."""
    budget = suite.budgets.get(budget_name(device_type))  # type: ignore[call-overload]
    seeds = budget.seeds if budget and budget.seeds is not None else suite.seeds
    timeout = budget.timeout if budget and budget.timeout is not None else suite.timeout
    runs: list[RunSpec] = []
    for task in suite.tasks:
        task_cls = registry.task(task.name).cls
        for task_params in _expand(task, budget.tasks.get(task.key) if budget else None):
            for solver in suite.solvers:
                for solver_params in _expand(solver, budget.solvers.get(solver.key) if budget else None):
                    for seed in seeds:
                        spec = RunSpec(
                            suite=suite.name, task=task.name, task_label=task.key,
                            task_params={**task_cls.defaults, **task_params}, solver=solver.name,
                            solver_label=solver.key,
                            solver_params={**registry.solver(solver.name).cls.defaults, **solver_params},
                            seed=int(seed), device=device_type, dtype=suite.dtype, timeout=float(timeout),
                            threads=suite.threads, metrics=tuple(suite.metrics) if suite.metrics else None,
                            budget=budget_name(device_type) if budget else "default",
                            code_version=_code_version(registry, task.name, solver.name),
                        )
                        runs.append(_with_key(spec))
    return runs


def _with_key(spec: RunSpec) -> RunSpec:
    from dataclasses import replace

    return replace(spec, key=run_key(spec))
