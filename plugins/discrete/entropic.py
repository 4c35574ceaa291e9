"""Entropic and proximal discrete OT in torch: Sinkhorn (kernel, stabilised, log-domain) and IPOT.

Both solvers take a discrete ``Problem`` (weights and a cost matrix, or points with a named cost), run on its
device and dtype (CPU or CUDA, float32 or float64) and return the plan, its transport cost ``<C, P>`` as the
distance, the iteration count and a convergence trace. Weights that are exactly zero are removed before
solving and their rows / columns of the plan are zero.

**Sinkhorn** (``sinkhorn``, one solver, ``method`` picks the numerics):

- ``"kernel"``: the textbook scaling iterations on ``K = exp(-C / eps)`` (the same order of updates as POT's
  ``ot.sinkhorn``: ``v = b / K^T u`` then ``u = a / K v``). Fastest; underflows when ``C / eps`` is large
  (float32, eps <= 1e-3 on a cost normalised to max 1) and then raises ``SolverDidNotConverge``.
- ``"stabilized"`` (default): the same kernel-domain iterations on ``K~ = exp((f + g - C) / eps)``; when a
  scaling grows past ``tau`` it is absorbed into the dual potentials ``f, g`` and ``K~`` is recomputed
  (Schmitzer 2019). Checks run every ``check_every`` iterations; if a window overflowed it is rolled back and
  replayed with per-half-step checks, falling back to an exact log-domain half-step where a kernel step
  would overflow. ``eps_scaling`` (default 0.5 for this method) first runs a short epsilon-scaling ramp from
  ``max(C)`` down to ``epsilon`` so that the potentials are warm and the kernel never underflows a whole row.
  Per iteration it costs what the kernel method costs plus O(n + m).
- ``"log"``: every half-step in the log domain (logsumexp). Exact reference, several times slower.

Stopping: the L1 marginal error of the current plan (rows are exact after each iteration, so this is the
column error, available without an extra pass) <= ``tol``, checked every ``check_every`` iterations, or
``max_iter``. ``strict=True`` turns "max_iter reached" into ``SolverDidNotConverge``; by default the plan is
returned with ``info["converged"] = 0`` and the LP metrics show its marginal violation.

**IPOT** (``ipot``, Xie et al., seed 004 Algorithm 1): proximal point iterations with a KL proximal term,
``Gamma <- diag(a) (G * Gamma) diag(b)`` with ``G = exp(-C / beta)``, ``L`` inner scaling steps warm-started
from the previous ones. After t exact steps Gamma is the entropic plan at ``eps = beta / t``, so IPOT reaches
the *unregularised* LP optimum while its kernel ``G`` never underflows. The matrix is kept as
``diag(alpha) R diag(gamma)`` so that one iteration is ``R *= G`` plus two mat-vecs; the scalings are absorbed
into ``R`` when they grow (and their per-step growth is folded into the kernel, so that this is rare). It
stops on a certificate: marginal error <= ``tol_marginal`` and ``(U - D) / D <= tol``, where ``U`` bounds the
cost of the plan rounded onto U(a, b) and ``D`` is the dual value of the c-transformed IPOT potential (a lower
bound on OPT); otherwise at ``max_iter``. Default ``beta = 0.1`` on costs normalised to max 1.

Speed (issue 15): both iterations are memory-bound mat-vecs. On CPU (float32/64) they run in compiled fused
kernels (``cpu_kernels.py``, numba): one pass over the rows does both mat-vecs (Sinkhorn reads the kernel from
memory once per iteration; IPOT reads G and R and writes R once), with the rows split across
``torch.get_num_threads()`` threads. Where numba is missing, or with ``OTBENCH_CPU_KERNELS=torch``, the torch path
runs: the same fusion over row blocks of ~2 MiB (``FUSED_BLOCK_BYTES``) with BLAS gemv per block, on one thread
(torch's MKL gemv does not speed up with a second thread here). No n x m temporaries and no host sync inside a
``check_every`` window on either path; CUDA takes the plain two-mat-vec path.

Trace: at checkpoints spaced geometrically in iterations (every ``check_every`` iterations at first, then
~25% apart) each solver records ``iteration``, ``time`` (solver time, excluding the monitoring itself),
``value`` (``<C, P>``), ``value_feasible`` (cost of the plan rounded onto U(a, b), an upper bound on OPT),
``marginal_error`` and ``dual_bound`` (a certified lower bound on OPT from the c-transform of the current
potentials). ``trace=False`` turns monitoring off (speed benchmarks).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from otbench import Problem, Solution, Solver, hookimpl
from otbench.api import InvalidInput, SolverDidNotConverge
from otbench.metrics.lp import c_transform_dual, plan_cost, round_to_polytope
from otbench.validation import check_discrete_problem
from otbench_plugins.discrete import cpu_kernels

__all__ = ["DiscreteResult", "prepare_discrete", "sinkhorn_solve", "ipot_solve", "Sinkhorn", "IPOT"]

SINKHORN_METHODS = ("kernel", "stabilized", "log")
TRACE_GROWTH = 1.25
# Fused iterations (CPU): a dense iteration is memory-bound (two mat-vecs each stream the n x m kernel from
# DRAM). Done over blocks of rows, ``K_I v`` -> ``u_I`` -> ``K^T u += K_I^T u_I`` (Sinkhorn), or
# ``R_I *= G_I`` -> ``R_I (gamma b)`` -> ``a_I`` -> ``R_I^T (alpha a)`` (IPOT), uses each block twice while it is
# in cache, so the kernel is read from memory once per iteration instead of twice. Same arithmetic; only the
# summation order of ``K^T u`` changes (a sum of per-block partial sums). Blocks of about FUSED_BLOCK_BYTES;
# matrices up to FUSED_MIN_BYTES (cache-resident anyway) and CUDA tensors take the plain two-mat-vec path.
FUSED_BLOCK_BYTES = 2 << 20
FUSED_MIN_BYTES = 4 << 20


@dataclass
class DiscreteResult:
    """A discrete solver's output: plan, its cost, iterations, convergence and trace (and dual potentials)."""

    plan: torch.Tensor
    value: float
    iterations: int
    converged: bool
    marginal_error: float
    trace: list[dict[str, float]] = field(default_factory=list)
    f: torch.Tensor | None = None
    g: torch.Tensor | None = None
    info: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- inputs
def prepare_discrete(problem: Problem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a discrete problem and return ``(a, b, C, rows, cols)`` on its device and dtype.

    ``rows`` / ``cols`` are the indices of the positive weights; ``a``, ``b``, ``C`` are restricted to them and
    ``b`` is rescaled to the exact mass of ``a`` (the validator accepts a relative mismatch of 1e-6).
    """
    a, b, cost = check_discrete_problem(problem)
    dev, dt = problem.device, problem.dtype
    a, b, cost = a.to(dev, dt), b.to(dev, dt), cost.to(dev, dt)
    rows = torch.nonzero(a > 0).flatten()
    cols = torch.nonzero(b > 0).flatten()
    if rows.numel() < a.numel():
        a, cost = a[rows], cost[rows]
    if cols.numel() < b.numel():
        b, cost = b[cols], cost[:, cols]
    b = b * (a.double().sum() / b.double().sum()).to(dt)
    return a, b, cost.contiguous(), rows, cols


def embed_plan(plan: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Put a plan solved on the support back into an ``[n, m]`` matrix (zero rows/columns elsewhere)."""
    if plan.shape == (n, m):
        return plan
    full = torch.zeros(n, m, dtype=plan.dtype, device=plan.device)
    full[rows[:, None], cols[None, :]] = plan
    return full


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-6 if dtype == torch.float64 else 1e-5


def _flush_subnormals(mat: torch.Tensor) -> torch.Tensor:
    """Zero entries below the smallest normal number: subnormal arithmetic is ~100x slower on x86 CPUs."""
    return mat.masked_fill_(mat < torch.finfo(mat.dtype).tiny, 0.0)


def row_blocks(mat: torch.Tensor, block_bytes: int | None = None, min_bytes: int | None = None) -> list[slice]:
    """Row slices of ``mat`` for the fused iterations (one slice = the plain path; see FUSED_BLOCK_BYTES)."""
    block_bytes = FUSED_BLOCK_BYTES if block_bytes is None else int(block_bytes)
    min_bytes = FUSED_MIN_BYTES if min_bytes is None else int(min_bytes)
    n, m = mat.shape
    row_bytes = max(1, m * mat.element_size())
    if mat.device.type != "cpu" or block_bytes <= 0 or n * row_bytes <= min_bytes:
        return [slice(0, n)]
    rows = max(8, block_bytes // row_bytes)
    return [slice(i, min(n, i + rows)) for i in range(0, n, rows)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Monitor:
    """Solver clock (excluding monitoring) and geometrically spaced trace checkpoints."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, enabled: bool) -> None:
        self.a, self.b, self.cost, self.enabled = a, b, cost, enabled
        self.trace: list[dict[str, float]] = []
        self.next_at = 1
        self.paused = 0.0
        _sync(cost.device)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        _sync(self.cost.device)
        return time.perf_counter() - self.start - self.paused

    def due(self, iteration: int) -> bool:
        return self.enabled and iteration >= self.next_at

    def record(self, iteration: int, plan: Callable[[], torch.Tensor], f: Callable[[], torch.Tensor | None],
               **extra: float) -> dict[str, float]:
        now = self.elapsed()
        t0 = time.perf_counter()
        p = plan().double()
        a, b, c = self.a.double(), self.b.double(), self.cost.double()
        ea = float((p.sum(1) - a).abs().sum())
        eb = float((p.sum(0) - b).abs().sum())
        point = {"iteration": float(iteration), "time": now, "value": plan_cost(p, c),
                 "value_feasible": plan_cost(round_to_polytope(p, a, b), c), "marginal_error": ea + eb}
        pot = f()
        if pot is not None and torch.isfinite(pot).all():
            point["dual_bound"] = c_transform_dual(c, pot, a, b)
        point.update(extra)
        self.trace.append(point)
        self.next_at = max(iteration + 1, math.ceil(iteration * TRACE_GROWTH))
        self.paused += time.perf_counter() - t0
        return point


# ------------------------------------------------------------------------------------------------ Sinkhorn
def _gibbs(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float, out: torch.Tensor | None) -> torch.Tensor:
    """``exp((f_i + g_j - C_ij) / eps)`` written into ``out`` when given (no new n x m allocation)."""
    out = torch.sub(f[:, None], cost, out=out) if out is not None else f[:, None] - cost
    out.add_(g[None, :]).div_(eps).exp_()
    return _flush_subnormals(out)


def _log_update_f(cost: torch.Tensor, g: torch.Tensor, a: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact Sinkhorn row update in the log domain: rows of exp((f + g - C)/eps) sum to a."""
    return eps * torch.log(a) - eps * torch.logsumexp((g[None, :] - cost) / eps, dim=1)


def _log_update_g(cost: torch.Tensor, f: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact Sinkhorn column update in the log domain: columns of exp((f + g - C)/eps) sum to b."""
    return eps * torch.log(b) - eps * torch.logsumexp((f[:, None] - cost) / eps, dim=0)


class _ScalingState:
    """Potentials f, g (absorbed), scalings u, v and the stabilised kernel K~ = exp((f + g - C)/eps)."""

    def __init__(self, cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float, init_u: float,
                 blocks: list[slice] | None = None) -> None:
        self.cost, self.eps = cost, eps
        self.f, self.g = f, g
        self.u = torch.full_like(f, init_u)
        self.v = torch.ones_like(g)
        self.K = _gibbs(cost, f, g, eps, None)  # refreshed in place from now on: views of it stay valid
        self.KTu = torch.mv(self.K.t(), self.u)
        self.Kv = torch.empty_like(f)
        self.blocks = row_blocks(self.K) if blocks is None else blocks
        self._views: list[tuple[torch.Tensor, ...]] = []
        self._views_of: torch.Tensor | None = None
        self.absorptions = 0
        self.log_steps = 0

    def set_eps(self, eps: float) -> None:
        self.absorb()
        self.eps = eps
        self.refresh()

    def absorb(self) -> None:
        """Move the scalings into the potentials (exact re-parametrisation of the same plan)."""
        self.f = self.f + self.eps * torch.log(self.u)
        self.g = self.g + self.eps * torch.log(self.v)
        self.u = torch.ones_like(self.u)
        self.v = torch.ones_like(self.v)

    def refresh(self) -> None:
        _gibbs(self.cost, self.f, self.g, self.eps, self.K)
        self.KTu = torch.mv(self.K.t(), self.u)

    def potentials(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.f + self.eps * torch.log(self.u), self.g + self.eps * torch.log(self.v)

    def plan(self) -> torch.Tensor:
        return self.u[:, None] * self.K * self.v[None, :]

    def _block_views(self, a: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per row block: (K_I, K_I^T, a_I, (Kv)_I, u_I), views rebuilt only when ``u`` was replaced."""
        if self._views_of is not self.u:
            self._views = [(self.K[s], self.K[s].t(), a[s], self.Kv[s], self.u[s]) for s in self.blocks]
            self._views_of = self.u
        return self._views

    def fast_steps(self, a: torch.Tensor, b: torch.Tensor, k: int) -> None:
        """``k`` kernel iterations ``v = b / K^T u; u = a / K v`` in place, no allocation, no host sync."""
        if cpu_kernels.sinkhorn_sweeps(self.K, a, b, self.u, self.v, self.KTu, k):
            return
        v, KTu = self.v, self.KTu
        if len(self.blocks) == 1:
            K, Kt, u, Kv = self.K, self.K.t(), self.u, self.Kv
            for _ in range(k):
                torch.div(b, KTu, out=v)
                torch.mv(K, v, out=Kv)
                torch.div(a, Kv, out=u)
                torch.mv(Kt, u, out=KTu)
            return
        views = self._block_views(a)
        (K0, K0t, a0, Kv0, u0), rest = views[0], views[1:]
        for _ in range(k):
            torch.div(b, KTu, out=v)
            torch.mv(K0, v, out=Kv0)
            torch.div(a0, Kv0, out=u0)
            torch.mv(K0t, u0, out=KTu)  # v has been used: K^T u can be accumulated in place
            for KI, KIt, aI, KvI, uI in rest:
                torch.mv(KI, v, out=KvI)
                torch.div(aI, KvI, out=uI)
                KTu.addmv_(KIt, uI)

    def careful_steps(self, a: torch.Tensor, b: torch.Tensor, k: int, log_tau: float) -> None:
        """Kernel half-steps with a check each; a half-step that would leave [1/tau, tau] is done in log space."""
        for _ in range(k):
            v_new = b / self.KTu
            if _bad(v_new, log_tau):
                self.f = self.f + self.eps * torch.log(self.u)
                self.u = torch.ones_like(self.u)
                self.g = _log_update_g(self.cost, self.f, b, self.eps)
                self.v = torch.ones_like(self.v)
                _gibbs(self.cost, self.f, self.g, self.eps, self.K)
                self.log_steps += 1
            else:
                self.v = v_new
            u_new = a / torch.mv(self.K, self.v)
            if _bad(u_new, log_tau):
                self.g = self.g + self.eps * torch.log(self.v)
                self.v = torch.ones_like(self.v)
                self.f = _log_update_f(self.cost, self.g, a, self.eps)
                self.u = torch.ones_like(self.u)
                _gibbs(self.cost, self.f, self.g, self.eps, self.K)
                self.log_steps += 1
            else:
                self.u = u_new
            self.KTu = torch.mv(self.K.t(), self.u)

    def column_error(self, b: torch.Tensor) -> float:
        return float((self.v * self.KTu - b).abs().sum())

    def max_log_scaling(self) -> float:
        """max |log u|, |log v| (inf / nan when a scaling over- or underflowed)."""
        lu = torch.log(self.u).abs().max()
        lv = torch.log(self.v).abs().max()
        return float(torch.maximum(lu, lv))


def _bad(x: torch.Tensor, log_tau: float) -> bool:
    lx = torch.log(x).abs().max()
    return not bool(torch.isfinite(lx)) or float(lx) > log_tau


def _epsilon_ramp(target: float, cost: torch.Tensor, factor: float | None) -> list[float]:
    if not factor:
        return [target]
    if not 0 < factor < 1:
        raise InvalidInput(f"sinkhorn: eps_scaling must be in (0, 1) or 0/None, got {factor}")
    top = float(cost.max() - cost.min())
    ramp = []
    eps = top
    while eps > target:
        ramp.append(eps)
        eps *= factor
    return ramp + [target]


def sinkhorn_solve(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, epsilon: float, method: str = "stabilized",
                   max_iter: int = 1000, tol: float | None = None, check_every: int = 10,
                   eps_scaling: float | None = None, tau: float | None = None, stage_iter: int = 20,
                   trace: bool = True, strict: bool = False) -> DiscreteResult:
    """Entropic OT ``min <C, P> + eps KL(P | a b^T)`` by Sinkhorn scaling; see the module docstring.

    ``a [n]``, ``b [m]`` positive with equal mass, ``cost [n, m]``; all on one device and dtype. ``eps_scaling``:
    factor of the epsilon ramp (``None`` = 0.5 for ``"stabilized"``/``"log"``, off for ``"kernel"``; 0 = off);
    each ramp stage runs at most ``stage_iter`` iterations (or until its marginal error <= 1e-2).
    ``max_iter`` counts the iterations at the target epsilon.
    """
    if method not in SINKHORN_METHODS:
        raise InvalidInput(f"sinkhorn: method must be one of {SINKHORN_METHODS}, got {method!r}")
    if not epsilon > 0:
        raise InvalidInput(f"sinkhorn: epsilon must be > 0, got {epsilon}")
    tol = _default_tol(cost.dtype) if tol is None else float(tol)
    check_every = max(1, int(check_every))
    if eps_scaling is None:
        eps_scaling = 0.5 if method != "kernel" else 0.0
    ramp = _epsilon_ramp(float(epsilon), cost, eps_scaling)
    monitor = _Monitor(a, b, cost, trace)
    if method == "log":
        return _sinkhorn_log(a, b, cost, ramp, max_iter, tol, check_every, stage_iter, monitor, strict)

    n, m = cost.shape
    zeros_n, zeros_m = cost.new_zeros(n), cost.new_zeros(m)
    stabilize = method == "stabilized"
    if tau is None:
        tau = 1e4 if cost.dtype == torch.float32 else 1e8
    log_tau = math.log(tau)
    init_u = 1.0 / n if not stabilize else 1.0
    # stabilised: shift f by min(C) (a constant shift leaves the iterates unchanged and keeps K~ <= 1)
    f0 = zeros_n + cost.min() if stabilize else zeros_n
    st = _ScalingState(cost, f0, zeros_m, ramp[0], init_u)
    iterations = 0  # at the target epsilon
    ramp_iterations = 0
    err = math.inf
    for stage, eps in enumerate(ramp):
        final = stage == len(ramp) - 1
        if stage > 0:
            st.set_eps(eps)
        budget = max_iter if final else stage_iter
        goal = tol if final else max(tol, 1e-2)
        done = 0
        while done < budget:
            k = min(check_every, budget - done)
            saved = (st.u.clone(), st.v.clone(), st.KTu.clone()) if stabilize else None
            st.fast_steps(a, b, k)
            scale = st.max_log_scaling()
            if not math.isfinite(scale):
                if not stabilize:
                    raise SolverDidNotConverge(
                        f"kernel Sinkhorn over/underflowed at epsilon={eps:g} in {cost.dtype} (C/eps up to "
                        f"{float(cost.max()) / eps:.3g}); use method='stabilized' or 'log', or a larger epsilon")
                st.u, st.v, st.KTu = saved
                st.careful_steps(a, b, k, log_tau)
            elif stabilize and scale > log_tau:
                st.absorb()
                st.refresh()
                st.absorptions += 1
            done += k
            if final:
                iterations = done
            else:
                ramp_iterations += k
            err = st.column_error(b)
            if final and monitor.due(iterations):
                monitor.record(iterations + ramp_iterations, st.plan, lambda: st.potentials()[0], epsilon=eps)
            if not math.isfinite(err):
                raise SolverDidNotConverge(f"Sinkhorn produced a non-finite marginal error at epsilon={eps:g}")
            if err <= goal:
                break
    converged = err <= tol
    if trace and (not monitor.trace or monitor.trace[-1]["iteration"] != iterations + ramp_iterations):
        monitor.record(iterations + ramp_iterations, st.plan, lambda: st.potentials()[0], epsilon=ramp[-1])
    if strict and not converged:
        raise SolverDidNotConverge(f"Sinkhorn reached max_iter={max_iter} with marginal error {err:.3g} > tol={tol:g}")
    f, g = st.potentials()
    K = st.K
    K.mul_(st.u[:, None]).mul_(st.v[None, :])  # the plan, in place of the kernel
    plan = K
    return DiscreteResult(
        plan=plan, value=plan_cost(plan, cost), iterations=iterations + ramp_iterations, converged=converged,
        marginal_error=err, trace=monitor.trace, f=f, g=g,
        info={"converged": float(converged), "marginal_error": err, "absorptions": float(st.absorptions),
              "log_steps": float(st.log_steps), "ramp_iterations": float(ramp_iterations),
              "solver_seconds": monitor.elapsed()})


def _sinkhorn_log(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, ramp: list[float], max_iter: int, tol: float,
                  check_every: int, stage_iter: int, monitor: _Monitor, strict: bool) -> DiscreteResult:
    """Log-domain Sinkhorn (every half-step a logsumexp): the numerically exact reference."""
    f = cost.new_zeros(cost.shape[0])
    g = cost.new_zeros(cost.shape[1])
    iterations = ramp_iterations = 0
    err = math.inf
    for stage, eps in enumerate(ramp):
        final = stage == len(ramp) - 1
        budget = max_iter if final else stage_iter
        goal = tol if final else max(tol, 1e-2)
        for done in range(1, budget + 1):
            g_new = _log_update_g(cost, f, b, eps)
            check = done % check_every == 0 or done == budget
            if check and done > 1:  # column sums of the current plan: b * exp((g - g_new)/eps)
                err = float((b * torch.expm1((g - g_new) / eps)).abs().sum())
            g = g_new
            f = _log_update_f(cost, g, a, eps)
            if final:
                iterations = done
            else:
                ramp_iterations += 1
            if check and done > 1:
                if final and monitor.due(iterations):
                    monitor.record(iterations + ramp_iterations,
                                   lambda: torch.exp((f[:, None] + g[None, :] - cost) / eps), lambda: f, epsilon=eps)
                if err <= goal:
                    break
    eps = ramp[-1]
    plan = torch.exp((f[:, None] + g[None, :] - cost) / eps)
    err = float((plan.sum(0) - b).abs().sum() + (plan.sum(1) - a).abs().sum())
    converged = err <= tol
    if monitor.enabled and (not monitor.trace or monitor.trace[-1]["iteration"] != iterations + ramp_iterations):
        monitor.record(iterations + ramp_iterations, lambda: plan, lambda: f, epsilon=eps)
    if strict and not converged:
        raise SolverDidNotConverge(f"log Sinkhorn reached max_iter={max_iter} with marginal error {err:.3g} > tol={tol:g}")
    return DiscreteResult(plan=plan, value=plan_cost(plan, cost), iterations=iterations + ramp_iterations,
                          converged=converged, marginal_error=err, trace=monitor.trace, f=f, g=g,
                          info={"converged": float(converged), "marginal_error": err,
                                "ramp_iterations": float(ramp_iterations), "solver_seconds": monitor.elapsed()})


# ---------------------------------------------------------------------------------------------------- IPOT
def ipot_solve(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, beta: float = 0.1, inner_iters: int = 1,
               max_iter: int = 5000, tol: float = 1e-5, tol_marginal: float | None = None, check_every: int = 10,
               tau: float | None = None, trace: bool = True, strict: bool = False) -> DiscreteResult:
    """IPOT (seed 004, Algorithm 1): proximal point iterations converging to the exact LP plan.

    ``beta``: proximal step (the kernel is ``exp(-C / beta)``); ``inner_iters``: L, scaling steps per proximal
    step, warm-started from the previous step. Stopping rule (a certificate, checked every ``check_every``
    iterations and at most ~10% of the iterations apart): the marginal error <= ``tol_marginal`` (default 1e-6
    in float64, 1e-5 in float32) and ``(U - D) / D <= tol`` where ``U = <C, P> + 2 max(C) err`` bounds the cost
    of the plan rounded onto U(a, b) (Altschuler et al. 2017, Lemma 7) and ``D`` is the dual value of the
    c-transformed current potential ``f = (beta / t) sum_s log a_s``, a lower bound on OPT.
    """
    if not beta > 0:
        raise InvalidInput(f"ipot: beta must be > 0, got {beta}")
    if int(inner_iters) < 1:
        raise InvalidInput(f"ipot: inner_iters must be >= 1, got {inner_iters}")
    tol_marginal = _default_tol(cost.dtype) if tol_marginal is None else float(tol_marginal)
    finfo = torch.finfo(cost.dtype)
    if tau is None:
        tau = 1e8 if cost.dtype == torch.float32 else 1e30
    log_tau = math.log(tau)
    log_hard = 0.4 * math.log(finfo.max)  # scalings must stay well inside the dtype's range
    if log_tau >= log_hard:
        raise InvalidInput(f"ipot: tau={tau:g} is too large for {cost.dtype}")
    check_every = max(1, int(check_every))
    n, m = cost.shape
    monitor = _Monitor(a, b, cost, trace)
    cmax = float(cost.abs().max())
    G = _flush_subnormals(torch.exp(-cost / beta))
    R = G.clone()  # Q = G * Gamma with Gamma^(1) = 1 1^T; Q = diag(alpha) R diag(gamma)
    alpha = torch.ones_like(a)
    gamma = torch.ones_like(b)
    # R is multiplied each step by G = diag(e^sf) exp(-C / beta) diag(e^sg); the scalings take e^-sf, e^-sg back.
    # sf, sg track the per-step growth of the scalings (-> f / beta, g / beta), so that they stay bounded and
    # absorptions are rare; the iterates are those of Algorithm 1 whatever sf, sg are.
    sf = torch.zeros(n, dtype=torch.float64, device=a.device)
    sg = torch.zeros(m, dtype=torch.float64, device=a.device)
    ef = torch.ones_like(a)
    eg = torch.ones_like(b)
    since_absorb = 0
    bs = torch.full_like(b, 1.0 / m)
    log_a_total = torch.zeros(n, dtype=torch.float64, device=a.device)  # sum_t log a_t = f * t / beta
    tmp_m = torch.empty_like(b)
    tmp_n = torch.empty_like(a)
    err = math.inf
    cert = math.inf
    absorptions = 0
    t = 0
    converged = False
    next_safety, last_safety, last_lg, rate = 1, 0, 0.0, 1.0
    next_cert = check_every

    def plan() -> torch.Tensor:
        return alpha[:, None] * R * gamma[None, :]

    def potential() -> torch.Tensor:
        return log_a_total * (beta / max(t, 1))

    as_ = torch.empty_like(a)
    gb = torch.empty_like(b)
    # alpha, gamma, G and R are updated in place from here on, so these per-row-block views stay valid
    views = [(R[r], G[r], a[r], alpha[r], as_[r], tmp_n[r]) for r in row_blocks(R)]

    def scaling_step(multiply: bool) -> None:
        """One inner step ``as = mu / (Q bs); bs = nu / (Q^T as)``, Q = diag(alpha) R diag(gamma), in place.

        With ``multiply`` it first does ``R *= G`` (Q^(t) = G * Gamma^(t)); over row blocks (see FUSED_BLOCK_BYTES)
        each block of R is multiplied, then used by both mat-vecs while it is in cache.
        """
        torch.mul(gamma, bs, out=gb)
        compiled = cpu_kernels.ipot_scaling_step(R, G, a, alpha, gb, as_, tmp_m, multiply)
        for i, (RI, GI, aI, alI, asI, tnI) in enumerate(() if compiled else views):
            if multiply:
                RI.mul_(GI)
            torch.mv(RI, gb, out=tnI)
            torch.mul(alI, tnI, out=asI)
            torch.div(aI, asI, out=asI)
            torch.mul(alI, asI, out=tnI)
            if i == 0:
                torch.mv(RI.t(), tnI, out=tmp_m)  # gb has been used by every row: accumulate in place
            else:
                tmp_m.addmv_(RI.t(), tnI)
        torch.mul(gamma, tmp_m, out=bs)
        torch.div(b, bs, out=bs)

    for t in range(1, int(max_iter) + 1):
        if t > 1:
            alpha.mul_(ef)
            gamma.mul_(eg)
        since_absorb += 1
        for inner in range(int(inner_iters)):
            scaling_step(multiply=t > 1 and inner == 0)
        # Gamma^(t+1) = diag(as) Q diag(bs) = diag(alpha * as) R diag(gamma * bs)
        alpha.mul_(as_)
        gamma.mul_(bs)
        log_a_total += torch.log(as_.double())
        checkpoint = t % check_every == 0 or t == max_iter
        if t >= next_safety or checkpoint:
            # the scalings grow while R *= G shrinks R: absorb them into R before they leave the dtype's range;
            # the next safety check is scheduled from the fastest growth seen so far
            lg = float(torch.maximum(torch.log(alpha).abs().max(), torch.log(gamma).abs().max()))
            if not math.isfinite(lg) or lg > log_hard:
                raise SolverDidNotConverge(f"IPOT scalings over/underflowed at iteration {t} (beta={beta:g}, "
                                           f"{cost.dtype}); try a larger beta")
            rate = max(rate, (lg - last_lg) / max(1, t - last_safety))
            if lg > log_tau:
                la, lgm = torch.log(alpha).double(), torch.log(gamma).double()
                R.mul_(alpha[:, None]).mul_(gamma[None, :])
                _flush_subnormals(R)
                alpha.fill_(1.0)
                gamma.fill_(1.0)
                sf += la / since_absorb
                sg += lgm / since_absorb
                ef, eg = torch.exp(-sf).to(a.dtype), torch.exp(-sg).to(b.dtype)
                G.copy_(torch.exp(sf[:, None] + sg[None, :] - cost.double() / beta) if cost.dtype == torch.float64
                        else torch.exp((sf.to(cost.dtype)[:, None] + sg.to(cost.dtype)[None, :]).sub_(cost, alpha=1.0 / beta)))
                _flush_subnormals(G)
                absorptions += 1
                since_absorb = 0
                lg = 0.0
            last_lg, last_safety = lg, t
            next_safety = t + max(1, min(check_every, int((log_tau - lg) / (1.5 * rate))))
        if checkpoint:
            # columns are exact after the b-step; the row error costs one mat-vec
            err = float((alpha * torch.mv(R, gamma) - a).abs().sum())
            if err <= tol_marginal and t >= next_cert:
                next_cert = max(t + check_every, int(t * 1.1))
                value = float(alpha.double() @ torch.mv(R * cost, gamma).double())
                upper = value + 2.0 * cmax * err
                lower = c_transform_dual(cost, potential().to(cost.dtype), a, b, dtype=cost.dtype)
                cert = (upper - lower) / max(abs(lower), 1e-300)
                if cert <= tol:
                    converged = True
            if monitor.due(t) or converged:
                monitor.record(t, plan, potential, certified_gap=cert if math.isfinite(cert) else -1.0)
            if converged:
                break
    final = plan()
    err = float((final.sum(1) - a).abs().sum() + (final.sum(0) - b).abs().sum())
    if trace and (not monitor.trace or monitor.trace[-1]["iteration"] != t):
        monitor.record(t, lambda: final, potential, certified_gap=cert if math.isfinite(cert) else -1.0)
    if strict and not converged:
        raise SolverDidNotConverge(f"IPOT reached max_iter={max_iter}: marginal error {err:.3g}, certified gap "
                                   f"{cert:.3g} (tol {tol:g})")
    return DiscreteResult(plan=final, value=plan_cost(final, cost), iterations=t, converged=converged,
                          marginal_error=err, trace=monitor.trace, f=potential(), g=None,
                          info={"converged": float(converged), "marginal_error": err, "absorptions": float(absorptions),
                                "certified_gap": cert if math.isfinite(cert) else -1.0,
                                "solver_seconds": monitor.elapsed()})


# ------------------------------------------------------------------------------------------------- solvers
def _to_solution(res: DiscreteResult, rows: torch.Tensor, cols: torch.Tensor, n: int, m: int) -> Solution:
    info = dict(res.info)
    info["value"] = res.value
    return Solution(distance=res.value, plan=embed_plan(res.plan, rows, cols, n, m), iterations=int(res.iterations),
                    trace=res.trace, info=info)


def _shape(problem: Problem) -> tuple[int, int]:
    if problem.cost_matrix is not None and problem.cost_matrix.ndim == 2:
        return tuple(problem.cost_matrix.shape)  # type: ignore[return-value]
    return problem.x.shape[0], problem.y.shape[0]


class Sinkhorn(Solver):
    """Entropic OT by Sinkhorn scaling (kernel / stabilised with absorption and epsilon ramp / log-domain)."""

    name = "sinkhorn"
    version = "2"  # 2: compiled fused CPU kernels (cpu_kernels.py); same iterates up to round-off
    kinds = frozenset({"discrete"})
    costs = frozenset({"euclidean", "sqeuclidean", "matrix"})
    provides = frozenset({"distance", "plan"})
    defaults = {"epsilon": 1e-2, "method": "stabilized", "max_iter": 1000, "tol": None, "check_every": 10,
                "eps_scaling": None, "tau": None, "stage_iter": 20, "trace": True, "strict": False}

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        a, b, cost, rows, cols = prepare_discrete(problem)
        p = self.params
        res = sinkhorn_solve(a, b, cost, float(p["epsilon"]), method=p["method"], max_iter=int(p["max_iter"]),
                             tol=p["tol"], check_every=int(p["check_every"]), eps_scaling=p["eps_scaling"],
                             tau=p["tau"], stage_iter=int(p["stage_iter"]), trace=bool(p["trace"]),
                             strict=bool(p["strict"]))
        return _to_solution(res, rows, cols, *_shape(problem))


class IPOT(Solver):
    """IPOT: inexact proximal point with a KL prox (seed 004 Alg. 1); converges to the exact LP plan."""

    name = "ipot"
    version = "2"  # 2: compiled fused CPU kernels (cpu_kernels.py); same iterates up to round-off
    kinds = frozenset({"discrete"})
    costs = frozenset({"euclidean", "sqeuclidean", "matrix"})
    provides = frozenset({"distance", "plan"})
    defaults = {"beta": 0.1, "inner_iters": 1, "max_iter": 5000, "tol": 1e-5, "tol_marginal": None,
                "check_every": 10, "tau": None, "trace": True, "strict": False}

    def solve(self, problem: Problem) -> Solution:
        self.check_supported(problem)
        a, b, cost, rows, cols = prepare_discrete(problem)
        p = self.params
        res = ipot_solve(a, b, cost, beta=float(p["beta"]), inner_iters=int(p["inner_iters"]),
                         max_iter=int(p["max_iter"]), tol=float(p["tol"]), tol_marginal=p["tol_marginal"],
                         check_every=int(p["check_every"]), tau=p["tau"], trace=bool(p["trace"]),
                         strict=bool(p["strict"]))
        return _to_solution(res, rows, cols, *_shape(problem))


@hookimpl
def otbench_register_solvers(register: Callable[[type], None]) -> None:
    register(Sinkhorn)
    register(IPOT)
