"""``otbench new-plugin NAME``: write a working, installable plugin package to start from.

The generated solver is real, if simple: the mean-difference critic f(x) = <w, x> with w the unit vector
along E_P x - E_Q x. It is 1-Lipschitz, so E_P f - E_Q f = |E_P x - E_Q x| is a lower bound of W1 (exact for
a pure translation). The generated task is a Gaussian and its translate, whose W1 (= |m|) and W2^2 (= |m|^2)
are known exactly, with seeded solver and evaluation streams from ``otbench.sampling.make_sampler_pair``.
The package includes conformance tests that call ``otbench.testing.check_solver`` and ``check_task``.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

_PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "An otbench plugin."
requires-python = ">=3.11"
dependencies = ["otbench", "torch"]

[project.entry-points.otbench]
{module} = "{module}"

[tool.setuptools]
packages = ["{module}"]
'''

_MODULE = '''"""{dist}: an otbench plugin. Replace the solver and the task below with yours.

`otbench show NAME` prints any built-in component (parameters, docstring, what a metric needs from the truth);
bump `version` when a change alters a component's numbers (otbench also reruns a finished run when the source
file of its task or solver changed since the run was recorded).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from otbench import InvalidInput, Problem, Solution, Solver, Task, Truth, hookimpl
from otbench.sampling import make_sampler_pair


class {cls}(Solver):
    """Mean-difference critic f(x) = <w, x>, w = unit(E_P x - E_Q x): a W1 lower bound."""

    name = "{solver}"
    version = "1"
    kinds = frozenset({{"continuous"}})
    costs = frozenset({{"euclidean"}})
    provides = frozenset({{"distance", "critic"}})
    defaults = {{"n_samples": 4096}}

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        n = int(self.params["n_samples"])
        x, y = problem.sample_p(n), problem.sample_q(n)
        gap = x.mean(0) - y.mean(0)
        w = gap / gap.norm().clamp_min(torch.finfo(gap.dtype).tiny)

        def critic(z: torch.Tensor) -> torch.Tensor:
            return z @ w

        return Solution(distance=float(gap.norm()), critic=critic, iterations=1)


class {task_cls}(Task):
    """N(0, I) to N(m, I) with |m| = shift: W1 = shift, W2^2 = shift^2 exactly (a translation is optimal)."""

    name = "{task}"
    version = "1"
    kind = "continuous"
    primary_metric = ("distance_rel_error", "min")  # an output of the core metric distance_error
    defaults = {{"dim": 2, "shift": 1.0, "cost": "euclidean"}}
    param_schema = {{"shift": {{"min": 0.0}}, "cost": {{"choices": ["euclidean", "sqeuclidean"]}}}}

    def build(self, seed: int, device: torch.device, dtype: torch.dtype) -> tuple[Problem, Truth]:
        dim, shift, cost = int(self.params["dim"]), float(self.params["shift"]), self.params["cost"]
        if dim < 1 or shift < 0 or cost not in ("euclidean", "sqeuclidean"):
            raise InvalidInput(f"{task}: need dim >= 1, shift >= 0, cost euclidean|sqeuclidean; got {{self.params}}")
        m = torch.zeros(dim, device=device, dtype=dtype)
        m[0] = shift

        def draw_p(n: int, gen: torch.Generator) -> torch.Tensor:
            return torch.randn(n, dim, generator=gen, device=device, dtype=dtype)

        def draw_q(n: int, gen: torch.Generator) -> torch.Tensor:
            return draw_p(n, gen) + m

        # the solver's streams and the metrics' streams are independent (the solver never sees evaluation data)
        solver_p, solver_q, eval_p, eval_q = make_sampler_pair(draw_p, draw_q, seed, device)
        problem = Problem("continuous", dim, cost, device, dtype, sample_p=solver_p, sample_q=solver_q, seed=seed)
        truth = Truth(distance=shift if cost == "euclidean" else shift**2, sample_p=eval_p, sample_q=eval_q,
                      map=lambda x: x + m)
        return problem, truth


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    register({cls})


@hookimpl
def otbench_register_tasks(register: Callable[[type], None]) -> None:
    register({task_cls})
'''

_TEST = '''import torch

from otbench.testing import check_solver, check_task

from {module} import {cls}, {task_cls}


def test_the_solver_conforms_to_the_otbench_solver_contract():
    check_solver({cls})


def test_the_task_conforms_to_the_otbench_task_contract():
    check_task({task_cls})
    check_task({task_cls}, {{"cost": "sqeuclidean", "dim": 3}})


def test_the_solver_is_exact_on_the_task():  # a translation: the mean-difference critic is optimal
    problem, truth = {task_cls}(dim=3, shift=2.0).build(0, torch.device("cpu"), torch.float64)
    solution = {cls}(n_samples=20000).solve(problem)
    assert abs(solution.distance - truth.distance) < 0.05
'''

_README = '''# {dist}

An otbench plugin with one solver (`{solver}`) and one task (`{task}`). `pip install -e .` next to otbench,
then `otbench plugins` lists it and `otbench list` shows both. Run `pytest` to check them against the otbench
contracts, and name them in a suite:

```yaml
name: {module}_check
seeds: [0, 1]
tasks: [{{name: {task}, params: {{dim: 4, shift: 2.0}}}}]
solvers: [{{name: {solver}, params: {{n_samples: 2048}}}}, {{name: exact_lp, params: {{n_samples: 256}}}}]
```

`otbench validate suite.yaml` checks it without running anything; `otbench run suite.yaml` runs it. Without
installing, `otbench run suite.yaml --plugin-module {module}` loads the package from the current folder.
'''


def new_plugin(name: str, parent: Path) -> Path:
    """Create ``parent/name`` with pyproject.toml, the package, a conformance test and a README."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]{0,99}", name):
        raise ValueError(f"a plugin distribution name must start with a letter and hold only letters, digits, "
                         f"'.', '_' and '-' (it names the package folder), got {name!r}")
    module = re.sub(r"\W", "_", name.lower().replace("-", "_"))
    if not module or module[0].isdigit() or keyword.iskeyword(module):
        raise ValueError(f"cannot make a Python package name from {name!r}")
    root = parent / name
    if root.exists():
        raise FileExistsError(f"{root} already exists")
    stem = module.removeprefix("otbench_")
    solver, task = stem + "_mean_difference", stem + "_shifted_gaussian"
    camel = "".join(part.capitalize() for part in module.split("_") if part)
    cls, task_cls = camel + "MeanDifference", camel + "ShiftedGaussian"
    fields = {"dist": name, "module": module, "solver": solver, "cls": cls, "task": task, "task_cls": task_cls}
    (root / module).mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text(_PYPROJECT.format(**fields))
    (root / module / "__init__.py").write_text(_MODULE.format(**fields))
    (root / "tests" / f"test_{module}.py").write_text(_TEST.format(**fields))
    (root / "README.md").write_text(_README.format(**fields))
    return root
