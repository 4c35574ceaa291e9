"""The libraries a user would pick instead of otbench's own solvers, as leaderboard rows on the same tasks.

- ``pot_sinkhorn``: POT's ``ot.sinkhorn`` with any of its numerical methods (``sinkhorn`` = Sinkhorn-Knopp,
  ``sinkhorn_log``, ``sinkhorn_stabilized``, ``sinkhorn_epsilon_scaling``, ``greenkhorn``), called the way a user
  calls it: NumPy float64 arrays, POT's own stopping rule (``stopThr`` on the marginal error, checked every 10
  iterations). The plan it returns is scored by the same LP-gap metrics as ours. POT's exact ``ot.emd`` is
  already the reference row ``exact_lp``. ``tau`` (absorption threshold of ``sinkhorn_stabilized`` and
  ``sinkhorn_epsilon_scaling``; None = POT's default 1e3) is passed through. Known POT 0.9.7 defects these rows
  expose (benchmarks/discrete_time_to_accuracy.py has the reproduction): after an absorption
  ``sinkhorn_stabilized`` resets its scalings to ``1/n, 1/m`` instead of 1, so when the last iteration absorbs
  (nearly always once n >= tau) it returns the plan divided by ``n m`` (``mass_error`` ~ 1 in the leaderboard,
  ``returned_mass`` in the record); and from an unshifted kernel whose column underflows entirely it returns a
  NaN matrix, which fails the run here (a NaN plan is never scored).
- ``geomloss_sinkhorn``: geomloss's ``SamplesLoss("sinkhorn")`` (tensorized backend, epsilon scaling,
  ``debias=False`` so that it estimates the regularised OT cost, not the Sinkhorn divergence). geomloss works on
  point clouds, not cost matrices, and returns dual potentials ``F`` (on x) and ``G`` (on y):
  - discrete problems: the plan ``a_i b_j exp((F_i + G_j - c_ij) / eps)`` (marginals are met up to the last
    scaling step; the LP metrics round it onto the polytope and report the raw violation);
  - continuous problems: ``n_samples`` points per side; the critic is the soft c-transform of ``G`` extended to
    any point, ``f(x) = -eps log sum_j b_j exp((G_j - c(x, y_j)) / eps)``, which for the Euclidean cost is a
    smoothed 1-Lipschitz Kantorovich potential (so the W1 gradient metrics apply), and the distance is
    ``<a, F> + <b, G>``.
  geomloss's cost is ``|x - y|`` for ``p = 1`` and ``|x - y|^2 / 2`` for ``p = 2``; the squared-Euclidean problems
  here use ``|x - y|^2``, so potentials are rescaled by 2 and ``eps = 2 blur^2``. ``blur`` is geomloss's
  length scale: ``eps = blur^p`` in its own cost units.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from otbench import Problem, Solution, Solver, hookimpl
from otbench.api import InvalidInput, SolverDidNotConverge
from otbench.costs import pairwise_cost
from otbench.validation import check_discrete_problem

POT_METHODS = ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling", "greenkhorn")


class POTSinkhorn(Solver):
    """POT's ot.sinkhorn (any of its methods) on NumPy float64, as a user would call it."""

    name = "pot_sinkhorn"
    kinds = frozenset({"discrete"})
    costs = frozenset({"euclidean", "sqeuclidean", "matrix"})
    provides = frozenset({"distance", "plan"})
    defaults = {"epsilon": 1e-2, "method": "sinkhorn", "max_iter": 1000, "tol": 1e-6, "tau": None}

    def _check(self) -> None:
        p = self.params
        if p["method"] not in POT_METHODS:
            raise InvalidInput(f"pot_sinkhorn: method must be one of {POT_METHODS}, got {p['method']!r}")
        if not (isinstance(p["epsilon"], (int, float)) and p["epsilon"] > 0):
            raise InvalidInput(f"pot_sinkhorn: epsilon must be a positive number, got {p['epsilon']!r}")
        if not (isinstance(p["max_iter"], int) and p["max_iter"] >= 1):
            raise InvalidInput(f"pot_sinkhorn: max_iter must be an integer >= 1, got {p['max_iter']!r}")
        if not (isinstance(p["tol"], (int, float)) and p["tol"] > 0):
            raise InvalidInput(f"pot_sinkhorn: tol must be a positive number, got {p['tol']!r}")
        if p["tau"] is not None:
            if not (isinstance(p["tau"], (int, float)) and p["tau"] > 1):
                raise InvalidInput(f"pot_sinkhorn: tau must be a number > 1 or null, got {p['tau']!r}")
            if p["method"] not in ("sinkhorn_stabilized", "sinkhorn_epsilon_scaling"):
                raise InvalidInput(f"pot_sinkhorn: tau applies to sinkhorn_stabilized / sinkhorn_epsilon_scaling, "
                                   f"not method {p['method']!r}")

    def prepare(self, problem: Problem) -> None:
        import ot  # noqa: F401  (first import takes seconds: keep it out of the timed solve)

    def solve(self, problem: Problem) -> Solution:
        import ot

        self.check_supported(problem)
        self._check()
        a, b, cost = check_discrete_problem(problem)
        p = self.params
        a_np, b_np = a.double().cpu().numpy(), b.double().cpu().numpy()
        cost_np = cost.double().cpu().numpy()
        b_np = b_np * (a_np.sum() / b_np.sum())
        extra = {} if p["tau"] is None else {"tau": float(p["tau"])}
        plan, log = ot.sinkhorn(a_np, b_np, cost_np, float(p["epsilon"]), method=p["method"],
                                numItermax=int(p["max_iter"]), stopThr=float(p["tol"]), log=True, warn=False, **extra)
        plan = np.asarray(plan, dtype=np.float64)
        if not np.isfinite(plan).all():
            raise SolverDidNotConverge(
                f"POT {p['method']} returned a plan with {int((~np.isfinite(plan)).sum())} non-finite entries at "
                f"epsilon={p['epsilon']:g} (its kernel exp(-C/epsilon) underflows; try a larger epsilon)")
        iterations = int(log.get("niter", log.get("n_iter", 0)) or 0)
        errors = log.get("err") or [float("nan")]
        err = float(errors[-1])
        value = float((plan * cost_np).sum())
        return Solution(distance=value, plan=torch.as_tensor(plan, device=problem.device, dtype=problem.dtype),
                        iterations=iterations,
                        info={"converged": float(err <= float(p["tol"])), "marginal_error": err, "value": value,
                              "returned_mass": float(plan.sum())})


def _geomloss_p(cost: str) -> int:
    return 1 if cost == "euclidean" else 2


class GeomlossSinkhorn(Solver):
    """geomloss SamplesLoss('sinkhorn') dual potentials: a plan (discrete) or a critic (continuous)."""

    name = "geomloss_sinkhorn"
    kinds = frozenset({"discrete", "continuous"})
    costs = frozenset({"euclidean", "sqeuclidean"})
    provides = frozenset({"distance", "plan", "critic"})
    provides_by_kind = {"discrete": frozenset({"distance", "plan"}), "continuous": frozenset({"distance", "critic"})}
    defaults = {"blur": 0.05, "scaling": 0.9, "n_samples": 2048}

    def supports(self, problem: Problem) -> str | None:
        reason = super().supports(problem)
        if reason is None and problem.kind == "discrete" and (problem.x is None or problem.y is None):
            return "geomloss_sinkhorn needs point clouds x and y (geomloss does not take a bare cost matrix)"
        return reason

    def _check(self) -> None:
        p = self.params
        if not (isinstance(p["blur"], (int, float)) and p["blur"] > 0):
            raise InvalidInput(f"geomloss_sinkhorn: blur must be a positive number, got {p['blur']!r}")
        if not (isinstance(p["scaling"], (int, float)) and 0 < p["scaling"] < 1):
            raise InvalidInput(f"geomloss_sinkhorn: scaling must lie in (0, 1), got {p['scaling']!r}")
        if not (isinstance(p["n_samples"], int) and p["n_samples"] >= 2):
            raise InvalidInput(f"geomloss_sinkhorn: n_samples must be an integer >= 2, got {p['n_samples']!r}")

    def prepare(self, problem: Problem) -> None:
        import geomloss  # noqa: F401

    def _potentials(self, a: torch.Tensor, x: torch.Tensor, b: torch.Tensor, y: torch.Tensor, cost: str
                    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(F, G, eps)`` in OUR cost units (|x-y| or |x-y|^2)."""
        from geomloss import SamplesLoss

        p = _geomloss_p(cost)
        loss = SamplesLoss("sinkhorn", p=p, blur=float(self.params["blur"]), scaling=float(self.params["scaling"]),
                           debias=False, potentials=True, backend="tensorized")
        f, g = loss(a, x, b, y)
        factor = 2.0 if p == 2 else 1.0  # geomloss's p=2 cost is |x-y|^2 / 2
        eps = factor * float(self.params["blur"]) ** p
        return f.detach().reshape(-1) * factor, g.detach().reshape(-1) * factor, eps

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        self._check()
        if problem.kind == "discrete":
            a, b, _ = check_discrete_problem(problem)
            x, y = problem.x.double(), problem.y.double()
            a, b = a.double(), b.double()
            b = b * (a.sum() / b.sum())
            f, g, eps = self._potentials(a, x, b, y, problem.cost)
            c = pairwise_cost(x, y, problem.cost)
            log_plan = (f[:, None] + g[None, :] - c) / eps + torch.log(a)[:, None] + torch.log(b)[None, :]
            plan = torch.exp(log_plan)
            value = float((plan * c).sum())
            return Solution(distance=value, plan=plan.to(problem.device, problem.dtype),
                            info={"value": value, "dual_value": float(a @ f + b @ g), "epsilon": eps})

        n = int(self.params["n_samples"])
        x, y = problem.sample_p(n).double(), problem.sample_q(n).double()
        w = torch.full((n,), 1.0 / n, dtype=torch.float64, device=x.device)
        f, g, eps = self._potentials(w, x, w, y, problem.cost)
        log_b = torch.log(w)
        cost_name, out_dtype = problem.cost, problem.dtype

        def critic(points: torch.Tensor) -> torch.Tensor:
            # the soft c-transform of G: defined everywhere, equal to F on the samples at convergence
            c = pairwise_cost(points.double(), y, cost_name)
            return (-eps * torch.logsumexp((g[None, :] - c) / eps + log_b[None, :], dim=1)).to(out_dtype)

        return Solution(distance=float(w @ f + w @ g), critic=critic, info={"epsilon": eps, "n_samples": float(n)})


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    register(POTSinkhorn)
    register(GeomlossSinkhorn)


__all__ = ["POTSinkhorn", "GeomlossSinkhorn", "POT_METHODS"]
