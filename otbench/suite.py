"""YAML suites: schema, validation with precise messages, per-device budgets and grid expansion into runs.

Every error names the file, the key path inside it and what was expected, and suggests the nearest known
name for an unknown solver, task, metric or parameter.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from otbench.registry import PluginImportError, Registry, suggest

__all__ = ["SuiteError", "Suite", "RunSpec", "load_suite", "plan_runs", "run_key", "count_runs", "DEFAULT_MAX_RUNS",
           "check_params"]

#: a suite name becomes a folder (results/<name>/...): letters, digits, '.', '_', '-'; starts with a letter/digit
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE = ("1 to 100 characters among letters, digits, '.', '_' and '-', starting with a letter or digit "
             "(it names the results folder results/<name>/)")
#: seeds are integers in [0, 2^63 - 1] (numpy and torch generators take them unchanged)
MAX_SEED = 2**63 - 1
#: the longest timeout accepted, in seconds (about 11.6 days); longer values are typos or .inf
MAX_TIMEOUT = 1e6
#: refuse to expand a suite into more runs than this unless the caller raises the limit (--max-runs)
DEFAULT_MAX_RUNS = 100_000


class SuiteError(ValueError):
    """An invalid suite; the message names the file, the key path and what was expected."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a key written twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: let the base class report it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first}, again at line {line}); "
                    "YAML would keep only the last one", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


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


def _check_seeds(v: list[int] | None) -> list[int] | None:
    if v is None:
        return v
    bad = [s for s in v if not 0 <= s <= MAX_SEED]
    if bad:
        raise ValueError(f"seeds must be integers in [0, 2^63 - 1], got {bad[0]}")
    first: dict[int, int] = {}
    for i, s in enumerate(v):
        if s in first:
            raise ValueError(f"seed {s} is listed twice (positions {first[s]} and {i}); each seed must be unique")
        first[s] = i
    return v


def _check_timeout(v: float | None) -> float | None:
    if v is not None and not (math.isfinite(v) and 0 < v <= MAX_TIMEOUT):
        raise ValueError(f"timeout must be a finite number of seconds in (0, {MAX_TIMEOUT:.0e}]")
    return v


class Budget(_Strict):
    """What changes on one device: seeds, timeout, and per-label task/solver overrides."""

    description: str = ""
    seeds: list[StrictInt] | None = Field(default=None, min_length=1)
    timeout: float | None = None
    tasks: dict[str, Override] = Field(default_factory=dict)
    solvers: dict[str, Override] = Field(default_factory=dict)

    _seeds = field_validator("seeds")(classmethod(lambda cls, v: _check_seeds(v)))
    _timeout = field_validator("timeout")(classmethod(lambda cls, v: _check_timeout(v)))


class Suite(_Strict):
    name: str
    description: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    seeds: list[StrictInt] = Field(default_factory=lambda: [0], min_length=1)
    timeout: float = 600.0
    threads: StrictInt | Literal["auto"] = "auto"
    metrics: list[str] | None = None
    tasks: list[ComponentSpec] = Field(min_length=1)
    solvers: list[ComponentSpec] = Field(min_length=1)
    budgets: dict[Literal["cpu", "cuda"], Budget] = Field(default_factory=dict)

    _seeds = field_validator("seeds")(classmethod(lambda cls, v: _check_seeds(v)))
    _timeout = field_validator("timeout")(classmethod(lambda cls, v: _check_timeout(v)))

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not NAME_PATTERN.fullmatch(v):
            raise ValueError(f"a suite name must be {NAME_RULE}")
        return v

    @field_validator("threads")
    @classmethod
    def _positive_threads(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 4096:
            raise ValueError("threads must be an integer in [1, 4096] or 'auto'")
        return v

    @field_validator("metrics")
    @classmethod
    def _metric_list(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("an empty list would apply no metric; omit 'metrics' to apply every metric whose "
                             "needs are met, or name at least one")
        first: dict[str, int] = {}
        for i, m in enumerate(v):
            if m in first:
                raise ValueError(f"metric {m!r} is listed twice (positions {first[m]} and {i})")
            first[m] = i
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
    #: hash of the task's and solver's plugin source files; kept beside the key (not in it), so that a record
    #: made by other code is detected without changing the key of existing records
    code_hash: str = field(default="")


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
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"  - {_where(loc)}: {msg} (got {got!r})")
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
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read suite file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise SuiteError(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SuiteError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise SuiteError(f"{path}: malformed YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: a suite must be a YAML mapping with keys tasks, solvers, ...; got {type(data).__name__}")
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise SuiteError(f"{path}: invalid suite\n  - <top level>: keys must be strings, got {bad_keys[0]!r}")
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        raise SuiteError(_describe_pydantic(path, exc)) from None


# -- parameter checks --------------------------------------------------------------------------------------

#: integer parameters that count something may not be negative ...
_COUNT = re.compile(r"(n|n_\w+|num_\w+|max_\w+|\w*iters?|\w*iterations|\w*steps|\w*epochs|\w*_size|\w*samples|"
                    r"\w*_dim|dim|bins|\w*layers|\w*width|hidden|depth|\w*_per_\w+)")
#: ... and these must be at least 1 (a sample, a dimension, a batch of nothing is an error, not a choice)
_POSITIVE = re.compile(r"(n|dim|\w*_dim|n_samples|batch_size|\w*_batch_size|n_projections|max_iter)")
_TYPE_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "a mapping"}


def param_rules(cls: type) -> dict[str, dict[str, Any]]:
    """The checks applied to each parameter of a task or solver class.

    By default a parameter takes the type of its default (``None`` default: anything), numbers must be finite,
    count-like integer parameters (``n_*``, ``max_*``, ``*_iters``, ``*_steps``, ``*_samples``...) must be
    >= 0, and sizes (``n``, ``dim``, ``n_samples``, ``batch_size``, ``max_iter``...) >= 1. A class may refine
    any of this with ``param_schema = {"name": {"type": "int", "min": 1, "max": 10, "choices": [...],
    "nullable": True}}``; its keys replace the inferred ones for that parameter.
    """
    rules: dict[str, dict[str, Any]] = {}
    for name, default in dict(getattr(cls, "defaults", {})).items():
        rule: dict[str, Any] = {}
        if default is None:
            rule["type"] = "any"
        elif isinstance(default, bool):
            rule["type"] = "bool"
        elif isinstance(default, int):
            rule["type"] = "int"
            if _POSITIVE.fullmatch(name) and default >= 1:
                rule["min"] = 1
            elif _COUNT.fullmatch(name) and default >= 0:
                rule["min"] = 0
        elif isinstance(default, float):
            rule["type"] = "float"
        elif isinstance(default, str):
            rule["type"] = "str"
        elif isinstance(default, (list, tuple)):
            rule["type"] = "list"
        elif isinstance(default, dict):
            rule["type"] = "dict"
        else:
            rule["type"] = "any"
        rules[name] = rule
    for name, extra in dict(getattr(cls, "param_schema", {}) or {}).items():
        rules[name] = {**rules.get(name, {}), **dict(extra)}
    return rules


def _value_problem(value: Any, rule: dict[str, Any], default: Any) -> str | None:
    """``None`` when ``value`` passes ``rule``, else what was expected."""
    kind = rule.get("type", "any")
    if value is None:
        return None if kind == "any" or rule.get("nullable") else f"expected {_expected(kind)}, got null"
    like = f" (like the default {default!r})" if default is not None else ""
    if kind == "bool" and not isinstance(value, bool):
        return f"expected {_TYPE_NAMES[bool]}{like}, got {value!r}"
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"expected {_TYPE_NAMES[int]}{like}, got {value!r}"
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"expected {_TYPE_NAMES[float]}{like}, got {value!r}"
    if kind == "str" and not isinstance(value, str):
        return f"expected {_TYPE_NAMES[str]}{like}, got {value!r}"
    if kind == "list" and not isinstance(value, list):
        return f"expected {_TYPE_NAMES[list]}{like}, got {value!r}"
    if kind == "dict" and not isinstance(value, dict):
        return f"expected {_TYPE_NAMES[dict]}{like}, got {value!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return f"expected a finite number, got {value!r}"
        if abs(value) > 2**63 - 1 and isinstance(value, int):
            return f"expected an integer below 2^63, got {value!r}"
        if "min" in rule and value < rule["min"]:
            return f"expected a value >= {rule['min']}, got {value!r}"
        if "max" in rule and value > rule["max"]:
            return f"expected a value <= {rule['max']}, got {value!r}"
    if "choices" in rule and value not in rule["choices"]:
        return f"expected one of {list(rule['choices'])}, got {value!r}{suggest(str(value), [str(c) for c in rule['choices']])}"
    return None


def _expected(kind: str) -> str:
    return {"bool": _TYPE_NAMES[bool], "int": _TYPE_NAMES[int], "float": _TYPE_NAMES[float], "str": _TYPE_NAMES[str],
            "list": _TYPE_NAMES[list], "dict": _TYPE_NAMES[dict]}.get(kind, "a value")


def check_params(cls: type, params: dict[str, Any]) -> list[tuple[str, str]]:
    """``(parameter, problem)`` for each value of ``params`` that ``cls``'s rules reject (see ``param_rules``)."""
    rules, defaults = param_rules(cls), dict(getattr(cls, "defaults", {}))
    out = []
    for key, value in params.items():
        if key in rules:
            why = _value_problem(value, rules[key], defaults.get(key))
            if why:
                out.append((key, why))
    return out


def _check_component(loc: str, spec: ComponentSpec | Override, cls: Any, what: str, problems: list[str]) -> None:
    """Check ``spec``'s parameters against ``cls``'s declared defaults and rules (a class or a registry
    ``Declaration``: nothing is imported)."""
    defaults = dict(cls.defaults)
    for section in ("params", "grid"):
        for key in getattr(spec, section):
            if key not in defaults:
                problems.append(f"  - {loc}.{section}.{key}: unknown {what} parameter{suggest(key, sorted(defaults))}; "
                                f"expected one of {sorted(defaults)}")
    for key, why in check_params(cls, {k: v for k, v in spec.params.items() if k in defaults}):
        problems.append(f"  - {loc}.params.{key}: {why}")
    for key, values in spec.grid.items():
        if len(values) == 0:
            problems.append(f"  - {loc}.grid.{key}: an empty list expands to no runs; expected at least one value")
        if key not in defaults:
            continue
        for j, value in enumerate(values):
            why = check_params(cls, {key: value})
            if why:
                problems.append(f"  - {loc}.grid.{key}[{j}]: {why[0][1]}")
        texts = [canonical_json(v) for v in values]
        for j, t in enumerate(texts):
            if t in texts[:j]:
                problems.append(f"  - {loc}.grid.{key}: value {values[j]!r} is listed twice (positions "
                                f"{texts.index(t)} and {j}); it would plan the same runs twice")
                break


def _instantiate(loc: str, cls: type, configs: list[dict[str, Any]], what: str, problems: list[str],
                 most: int = 200) -> None:
    """Construct the component once per distinct configuration: a plugin that checks its parameters in
    ``__init__`` reports a bad value now, not in every run."""
    seen: set[str] = set()
    for params in configs:
        text = canonical_json(params)
        if text in seen:
            continue
        seen.add(text)
        if len(seen) > most:
            return
        try:
            cls(**params)
        except Exception as exc:  # the plugin's own message says what it expected
            problems.append(f"  - {loc}: the {what} rejects parameters {text}: {type(exc).__name__}: {exc}")
            return


def validate_suite(suite: Suite, registry: Registry, path: str | Path = "<suite>",
                   max_runs: int = DEFAULT_MAX_RUNS, construct: bool = True) -> None:
    """Check names, parameters, labels and budgets against the registry, then plan the runs of every budget
    (refusing more than ``max_runs``, and any two entries that plan the same run); raise SuiteError listing
    all problems.

    Everything but one check reads the components' declared class attributes and imports no plugin. With
    ``construct`` (the default, and always before running) each distinct configuration is also constructed
    once, so that a plugin's own checks in ``__init__`` speak now; that imports the plugins (torch: seconds).
    """
    path = Path(path)
    problems: list[str] = []
    for section, table, what in (("tasks", registry.tasks, "task"), ("solvers", registry.solvers, "solver")):
        seen: dict[str, int] = {}
        for i, spec in enumerate(getattr(suite, section)):
            loc = f"{section}[{i}]"
            if spec.name not in table:
                hint = suggest(spec.name, sorted(table))
                problems.append(f"  - {loc}.name: unknown {what} {spec.name!r}{hint}; known: {sorted(table)}"
                                + ("" if hint else "; if it comes from a plugin, is the plugin installed "
                                   "(`otbench plugins`), or load its module with --plugin-module"))
            else:
                _check_component(loc, spec, table[spec.name].info, what, problems)
            if spec.key in seen:
                problems.append(f"  - {loc}: duplicate label {spec.key!r} (also {section}[{seen[spec.key]}]); "
                                "give each entry a unique 'label'")
            seen.setdefault(spec.key, i)
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
                    _check_component(loc, override, table[entries[label].name].info, section[:-1], problems)
    if problems:
        raise SuiteError(f"{path}: invalid suite\n" + "\n".join(problems))
    for device in ("cpu", "cuda"):
        count = count_runs(suite, device)
        if count > max_runs:
            raise SuiteError(f"{path}: invalid suite\n  - the {device} budget expands to {count:,} runs, over the "
                             f"limit of {max_runs:,}; shrink the grid or seeds, or raise the limit with "
                             f"--max-runs {count}")
    for device in ("cpu", "cuda"):
        budget = suite.budgets.get(device)  # type: ignore[call-overload]
        for section, table, what in (("tasks", registry.tasks, "task"), ("solvers", registry.solvers, "solver")):
            for i, spec in enumerate(getattr(suite, section)):
                if not construct:
                    continue
                override = getattr(budget, section).get(spec.key) if budget else None
                try:
                    cls = table[spec.name].cls
                except PluginImportError as exc:
                    problems.append(f"  - {section}[{i}].name: the {what} {spec.name!r} cannot be loaded: {exc}")
                    continue
                configs = [{**cls.defaults, **p} for p in _expand(spec, override)]
                _instantiate(f"{section}[{i}] ({spec.key!r}, {device} budget)", cls, configs, what, problems)
        if problems:
            break
        problems += _duplicate_runs(plan_runs(suite, registry, device, max_runs=max_runs), device)
    if problems:
        raise SuiteError(f"{path}: invalid suite\n" + "\n".join(dict.fromkeys(problems)))


def _duplicate_runs(specs: list[RunSpec], device: str) -> list[str]:
    """Two entries that plan the same run (same task, solver, parameters and seed under two labels)."""
    first: dict[str, RunSpec] = {}
    problems = []
    reported: set[tuple[str, str, str, str]] = set()
    for spec in specs:
        other = first.setdefault(spec.key, spec)
        if other is spec:
            continue
        pair = (other.task_label, other.solver_label, spec.task_label, spec.solver_label)
        if pair in reported:
            continue
        reported.add(pair)
        problems.append(
            f"  - task {other.task_label!r} / solver {other.solver_label!r} and task {spec.task_label!r} / solver "
            f"{spec.solver_label!r} plan the same run on {device} ({spec.task} {canonical_json(spec.task_params)}, "
            f"{spec.solver} {canonical_json(spec.solver_params)}, seed {spec.seed}); one label would vanish from the "
            "leaderboard: change a parameter or drop one entry")
    return problems


def _grid_of(spec: ComponentSpec, override: Override | None) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    params = dict(spec.params)
    grid = dict(spec.grid)
    if override is not None:
        params.update(override.params)
        for k in override.params:  # a budget's fixed value wins over the base grid axis
            grid.pop(k, None)
        grid.update(override.grid)
    for k in grid:
        params.pop(k, None)
    return params, grid


def _expand(spec: ComponentSpec, override: Override | None) -> list[dict[str, Any]]:
    params, grid = _grid_of(spec, override)
    keys = sorted(grid)
    return [{**params, **dict(zip(keys, combo))} for combo in itertools.product(*(grid[k] for k in keys))]


def count_runs(suite: Suite, device_type: str) -> int:
    """How many runs ``plan_runs`` would make on ``device_type``, computed without expanding anything."""
    budget = suite.budgets.get(budget_name(device_type))  # type: ignore[call-overload]
    seeds = budget.seeds if budget and budget.seeds is not None else suite.seeds

    def configs(section: str) -> int:
        total = 0
        for spec in getattr(suite, section):
            _, grid = _grid_of(spec, getattr(budget, section).get(spec.key) if budget else None)
            total += math.prod(len(v) for v in grid.values())
        return total

    return configs("tasks") * configs("solvers") * len(seeds)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


#: the payload of ``run_key`` is unchanged since the first release; bump this (and say so in the changelog)
#: if it ever changes, so that old records are recognised as another key format instead of silently mixing
KEY_FORMAT = 1


def run_key(spec: RunSpec) -> str:
    """Content key of a run: task, solver, parameters, seed, dtype, device type and code version.

    The hash of the plugins' source files is *not* in the key (see ``RunSpec.code_hash``): records made
    before it existed keep their keys, and a record made by other code is found by comparing hashes.
    """
    payload = {
        "task": spec.task, "task_params": spec.task_params, "solver": spec.solver,
        "solver_params": spec.solver_params, "seed": spec.seed, "dtype": spec.dtype,
        "device": spec.device, "code": spec.code_version,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:20]


def _code_version(registry: Registry, task: str, solver: str) -> str:
    import otbench

    t, s = registry.task(task), registry.solver(solver)
    return canonical_json([otbench.__version__, t.version, t.info.version, s.version, s.info.version])


def code_hash(registry: Registry, task: str, solver: str) -> str:
    """``task:<hash> solver:<hash>`` of the source files defining the task and solver classes."""
    return f"task:{registry.task(task).source_hash} solver:{registry.solver(solver).source_hash}"


def budget_name(device_type: str) -> str:
    return "cuda" if device_type == "cuda" else "cpu"


def plan_runs(suite: Suite, registry: Registry, device_type: str, max_runs: int = DEFAULT_MAX_RUNS) -> list[RunSpec]:
    """Expand the suite into runs for a device type (``cpu`` or ``cuda``), applying that device's budget.

    Refuses (``SuiteError``) to expand past ``max_runs`` runs; the count is taken before expanding.
    """
    count = count_runs(suite, device_type)
    if count > max_runs:
        raise SuiteError(f"suite {suite.name!r} expands to {count:,} runs on {device_type}, over the limit of "
                         f"{max_runs:,}; shrink the grid or seeds, or raise the limit with --max-runs {count}")
    budget = suite.budgets.get(budget_name(device_type))  # type: ignore[call-overload]
    seeds = budget.seeds if budget and budget.seeds is not None else suite.seeds
    timeout = budget.timeout if budget and budget.timeout is not None else suite.timeout
    runs: list[RunSpec] = []
    versions: dict[tuple[str, str], tuple[str, str]] = {}
    for task in suite.tasks:
        task_info = registry.task(task.name).info
        for task_params in _expand(task, budget.tasks.get(task.key) if budget else None):
            for solver in suite.solvers:
                pair = (task.name, solver.name)
                if pair not in versions:
                    versions[pair] = (_code_version(registry, *pair), code_hash(registry, *pair))
                for solver_params in _expand(solver, budget.solvers.get(solver.key) if budget else None):
                    for seed in seeds:
                        spec = RunSpec(
                            suite=suite.name, task=task.name, task_label=task.key,
                            task_params={**task_info.defaults, **task_params}, solver=solver.name,
                            solver_label=solver.key,
                            solver_params={**registry.solver(solver.name).info.defaults, **solver_params},
                            seed=int(seed), device=device_type, dtype=suite.dtype, timeout=float(timeout),
                            threads=suite.threads, metrics=tuple(suite.metrics) if suite.metrics else None,
                            budget=budget_name(device_type) if budget else "default",
                            code_version=versions[pair][0], code_hash=versions[pair][1],
                        )
                        runs.append(_with_key(spec))
    return runs


def _with_key(spec: RunSpec) -> RunSpec:
    from dataclasses import replace

    return replace(spec, key=run_key(spec))
