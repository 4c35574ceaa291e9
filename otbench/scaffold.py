"""``otbench new-plugin NAME``: write a working, installable plugin package to start from.

The generated solver is real, if simple: the mean-difference critic f(x) = <w, x> with w the unit vector
along E_P x - E_Q x. It is 1-Lipschitz, so E_P f - E_Q f = |E_P x - E_Q x| is a lower bound of W1 (exact for
a pure translation). The package includes a conformance test that calls ``otbench.testing.check_solver``.
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

_MODULE = '''"""{dist}: an otbench plugin. Replace the solver below with yours."""

from __future__ import annotations

from collections.abc import Callable

import torch

from otbench import Problem, Solution, Solver, hookimpl


class {cls}(Solver):
    """Mean-difference critic f(x) = <w, x>, w = unit(E_P x - E_Q x): a W1 lower bound."""

    name = "{solver}"
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


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    register({cls})
'''

_TEST = '''from otbench.testing import check_solver

from {module} import {cls}


def test_conforms_to_the_otbench_solver_contract():
    check_solver({cls})
'''

_README = '''# {dist}

An otbench plugin. `pip install -e .` next to otbench, then `otbench plugins` lists it and
`otbench list solvers` shows `{solver}`. Run `pytest` to check the solver against the otbench contract, and
name it in a suite: `solvers: [{{name: {solver}}}]`.
'''


def new_plugin(name: str, parent: Path) -> Path:
    """Create ``parent/name`` with pyproject.toml, the package, a conformance test and a README."""
    module = re.sub(r"\W", "_", name.lower().replace("-", "_"))
    if not module or module[0].isdigit() or keyword.iskeyword(module):
        raise ValueError(f"cannot make a Python package name from {name!r}")
    root = parent / name
    if root.exists():
        raise FileExistsError(f"{root} already exists")
    solver = module.removeprefix("otbench_") + "_mean_difference"
    cls = "".join(part.capitalize() for part in module.split("_") if part) + "MeanDifference"
    fields = {"dist": name, "module": module, "solver": solver, "cls": cls}
    (root / module).mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text(_PYPROJECT.format(**fields))
    (root / module / "__init__.py").write_text(_MODULE.format(**fields))
    (root / "tests" / f"test_{module}.py").write_text(_TEST.format(**fields))
    (root / "README.md").write_text(_README.format(**fields))
    return root
