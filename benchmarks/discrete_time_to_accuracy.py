"""Time to accuracy on dense discrete OT: ours (Sinkhorn kernel / stabilised, IPOT) against POT's ``ot.sinkhorn``
(``sinkhorn``, ``sinkhorn_stabilized``, ``sinkhorn_epsilon_scaling``) and ``ot.emd``.

Problems: n points against n points, uniform in [0, 1]^d (d = 2 and 16), uniform weights, squared-Euclidean cost
normalised to max 1, float64 everywhere, seed 0. LP optimum ``OPT`` from ``ot.emd2`` (exact network simplex).

Accuracy of a plan P: ``gap = (<C, round(P)> - OPT) / OPT`` where ``round`` is the Altschuler-Weed-Rigollet
rounding onto U(a, b) (otbench.metrics.lp.round_to_polytope), so that an unconverged plan is not credited with
its marginal violation. Targets: gap <= 1e-4 and <= 1e-6.

Invalid outputs are failures, not scores. A returned matrix is invalid when it has a non-finite entry or when its
total mass is off by more than 1e-3 (relative): every method here ends on a row or a column scaling, which leaves
the mass exact, so a matrix of mass 1e-6 is not an unconverged plan but a wrong return value; rounding it would
give about the independent coupling a b^T and a meaningless gap. Such runs are counted in the "invalid" column and
listed under the table; they never count towards a target or the best gap. Two known POT (0.9.7) defects produce
them (``sinkhorn_stabilized``, also run inside ``sinkhorn_epsilon_scaling``):

- after an absorption it resets the scalings to ``u = 1/n, v = 1/m`` where ``alpha, beta`` already hold them
  (the neutral value is 1), so when the last iteration absorbs, the returned matrix is the plan times
  ``1/(n m)``. Right after such a reset the next ``v`` is about ``n b_j / colsum_j``, about ``n``, so for
  ``n >= tau`` (default ``tau=1e3``), once it has absorbed, it absorbs on every iteration: at n >= 1000 nearly
  every run returns plan/(n m) (and recomputes the n x m kernel every iteration, about 6x slower). Below that it
  happens early on or at small epsilon. POT warns about none of this.
- it starts from the unshifted kernel ``exp(-C/eps)``: when a column's largest entry is below about 1e-308
  (min_i C_ij / eps above about 710: d = 16 at eps <= 3e-4 for n=500, <= 1e-4 for n=1000) the first ``v``
  overflows, the inf/NaN is absorbed into ``alpha, beta``, and the NaN guard then restores only ``u, v``: a NaN
  matrix, whatever ``tau``.

So POT's two stabilised methods run twice: with POT's default ``tau`` (as a user calls them) and with
``tau=1e8`` (our stabilised solver's threshold in float64), where absorptions are rare and the plan comes back
at the right scale; the comparison of algorithms is with the latter.

Protocol (identical for every iterative method): for each regularisation in the method's ladder (epsilon for
Sinkhorn, beta for IPOT) and for each iteration budget K in a doubling ladder, run the solver from scratch
for exactly K iterations (stopping rules off: ``tol=-1`` / ``stopThr=0``) and record (time, gap). For
``sinkhorn_epsilon_scaling`` POT raises ``numItermax`` (outer epsilon steps, epsilon_i = 1e4 e^-i + eps) to at
least 35, so it runs with ``numItermax=35`` and the ladder is over ``numInnerItermax`` (stabilised iterations per
outer step, all run when ``stopThr=0``): K = 35 x inner iterations in total, shown as "35x<inner>". A
regularisation's ladder stops once its gap is <= 1e-6, stops improving from K >= 800 iterations on (gap > 0.99 x
the previous valid one, or an invalid output: the entropic bias floor), returns a non-finite matrix or raises
(kernel underflow), or one run exceeds ``--max-seconds`` (so "not reached" means: not within that budget per run).
The time to a target is the smallest recorded time among valid runs that reached it, with the (regularisation, K)
that did; otherwise "not reached" and the best valid gap seen. ``emd`` is timed once (gap 0 up to round-off). Ours
runs with ``trace=False`` (no monitoring) and our stabilised method's default epsilon ramp. Times are CPU seconds
of this thread (``time.thread_time``) when ``--threads 1``, wall seconds otherwise; the machine load average is
printed. Nothing is asserted: it prints Markdown tables.

    python benchmarks/discrete_time_to_accuracy.py --quick          # n = 500, a few minutes on 2 cores
    python benchmarks/discrete_time_to_accuracy.py --sizes 500 1000 2000 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from otbench.metrics.lp import plan_cost, round_to_polytope
from otbench_plugins.discrete.entropic import ipot_solve, sinkhorn_solve

TARGETS = (1e-4, 1e-6)
EPS_LADDER = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
BETA_LADDER = (0.1, 0.03)
ITER_LADDER = tuple(25 * 2**k for k in range(10))  # 25 ... 12800
POT_MIN_OUTER = 35  # sinkhorn_epsilon_scaling runs max(35, numItermax) outer steps
INNER_LADDER = tuple(5 * 2**k for k in range(8))  # 5 ... 640 stabilised iterations per outer step
STALL_AFTER = 800  # a ladder may stop for lack of progress only from this many iterations on
MASS_RTOL = 1e-3  # a returned matrix whose total mass is off by more than this (relative) is invalid
POT_TAU_FIX = 1e8  # absorption threshold of our stabilised solver in float64


class Method(NamedTuple):
    regs: tuple[float, ...]  # regularisation ladder
    ladder: tuple[int, ...]  # iteration-budget ladder (per outer step when outer > 1)
    run: Callable[[float, int], object]  # run(reg, K) -> plan
    outer: int = 1  # iterations per ladder unit: total iterations = outer * K


class Run(NamedTuple):
    reg: float
    k: int  # ladder value
    seconds: float
    gap: float  # inf when invalid
    invalid: str | None  # why the returned matrix is not a plan, or None


def make_problem(n: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    y = torch.rand(n, d, generator=g, dtype=torch.float64)
    c = torch.cdist(x, y).square()
    c = c / c.max()
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    return a, a.clone(), c


def methods(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> dict[str, Method]:
    """name -> Method (see the module docstring for the ladders)."""
    import ot

    an, bn, cn = a.numpy(), b.numpy(), c.numpy()
    kw = {"stopThr": 0.0, "warn": False}
    out = {
        "ours sinkhorn kernel": Method(EPS_LADDER, ITER_LADDER, lambda e, k: sinkhorn_solve(
            a, b, c, e, method="kernel", max_iter=k, tol=-1.0, trace=False).plan),
        "ours sinkhorn stabilized": Method(EPS_LADDER, ITER_LADDER, lambda e, k: sinkhorn_solve(
            a, b, c, e, method="stabilized", max_iter=k, tol=-1.0, trace=False).plan),
        "ours ipot": Method(BETA_LADDER, ITER_LADDER, lambda beta, k: ipot_solve(
            a, b, c, beta=beta, max_iter=k, tol=-1.0, tol_marginal=-1.0, trace=False).plan),
        "POT sinkhorn": Method(EPS_LADDER, ITER_LADDER, lambda e, k: ot.sinkhorn(
            an, bn, cn, e, method="sinkhorn", numItermax=k, **kw)),
    }
    for label, tau in (("", {}), (f" (tau={POT_TAU_FIX:g})", {"tau": POT_TAU_FIX})):
        out["POT sinkhorn_stabilized" + label] = Method(EPS_LADDER, ITER_LADDER, lambda e, k, tau=tau: ot.sinkhorn(
            an, bn, cn, e, method="sinkhorn_stabilized", numItermax=k, **tau, **kw))
        out["POT sinkhorn_epsilon_scaling" + label] = Method(
            EPS_LADDER, INNER_LADDER, lambda e, k, tau=tau: ot.sinkhorn(
                an, bn, cn, e, method="sinkhorn_epsilon_scaling", numItermax=POT_MIN_OUTER, numInnerItermax=k,
                **tau, **kw), outer=POT_MIN_OUTER)
    return out


def check_plan(plan, a: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """The plan as a float64 tensor, and why it is not a valid output (None when it is)."""
    p = torch.as_tensor(np.asarray(plan) if not isinstance(plan, torch.Tensor) else plan, dtype=torch.float64)
    if not torch.isfinite(p).all():
        return p, "non-finite"
    mass, want = float(p.sum()), float(a.sum())
    if abs(mass - want) > MASS_RTOL * want:
        return p, f"mass {mass:.1g}"
    return p, None


def gap_of(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, opt: float) -> float:
    return (plan_cost(round_to_polytope(p, a, b), c) - opt) / opt


def scan(method: Method, a, b, c, opt: float, clock, max_seconds: float) -> list[Run]:
    """All runs of the protocol in the module docstring."""
    records = []
    for reg in method.regs:
        prev = float("inf")
        for k in method.ladder:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t0 = clock()
                try:
                    plan = method.run(reg, k)
                except Exception:  # e.g. kernel Sinkhorn underflow at small epsilon: this setting is out
                    break
                sec = clock() - t0
            p, invalid = check_plan(plan, a)
            if invalid is not None:
                said = next((str(w.message) for w in caught if "numerical errors" in str(w.message).lower()), None)
                if said:  # POT's own notice, e.g. "Numerical errors at iteration 1"
                    invalid += f" (POT: {said.lower().removeprefix('warning: ')})"
            gap = gap_of(p, a, b, c, opt) if invalid is None else float("inf")
            records.append(Run(reg, k, sec, gap, invalid))
            if invalid is not None and invalid.startswith("non-finite"):
                break  # POT's NaN comes from its first iterations, which a larger K repeats
            stalled = method.outer * k >= STALL_AFTER and (invalid is not None or gap > 0.99 * prev)
            if gap <= TARGETS[-1] or stalled or sec > max_seconds:
                break
            if invalid is None:
                prev = gap
    return records


def k_label(method: Method, k: int) -> str:
    return f"{method.outer}x{k}" if method.outer > 1 else str(k)


def summarise(method: Method, records: list[Run], footnotes: list[str], where: str) -> list[str]:
    """Table cells: time to each target, best valid gap, invalid runs (listed in a new entry of ``footnotes``)."""
    cells = []
    valid = [r for r in records if r.invalid is None]
    best = f"{min(r.gap for r in valid):.2g}" if valid else "no valid run"
    for target in TARGETS:
        hits = [r for r in valid if r.gap <= target]
        if hits:
            r = min(hits, key=lambda r: r.seconds)
            cells.append(f"{r.seconds:.3g} s ({r.reg:g}, {k_label(method, r.k)})")
        else:
            cells.append(f"not reached (best {best})" if valid else "not reached (no valid run)")
    cells.append(best)
    bad = [r for r in records if r.invalid is not None]
    if not bad:
        cells.append(f"0 of {len(records)}")
        return cells
    groups: dict[str, dict[float, list[str]]] = {}
    for r in bad:
        groups.setdefault(r.invalid, {}).setdefault(r.reg, []).append(k_label(method, r.k))
    listed = " | ".join(f"{why} at " + "; ".join(f"reg {reg:g}: K {', '.join(ks)}" for reg, ks in by_reg.items())
                        for why, by_reg in groups.items())
    footnotes.append(f"{where}: {listed}")
    cells.append(f"{len(bad)} of {len(records)} [{len(footnotes)}]")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 500 only")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--dims", type=int, nargs="*", default=[2, 16])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="stop a ladder after a run this long")
    parser.add_argument("--methods", nargs="*", default=None, help="only the methods whose name contains one of these")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    np.seterr(all="ignore")
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads, user_api="blas")  # POT's numpy BLAS on the same number of threads
    except ImportError:
        pass
    import ot

    clock = time.thread_time if args.threads == 1 else time.perf_counter
    sizes = args.sizes or ([500] if args.quick else [500, 1000, 2000])
    footnotes: list[str] = []
    print(f"POT {ot.__version__}, threads={args.threads} clock={'thread CPU time' if args.threads == 1 else 'wall'} "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print("cell: time to gap (regularisation, iterations of the fastest setting that reached it); "
          "invalid: runs whose returned matrix was not a plan (footnotes below), never scored\n")
    print("| n | d | method | to 1e-4 | to 1e-6 | best gap | invalid |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        for d in args.dims:
            a, b, c = make_problem(n, d)
            an, bn, cn = a.numpy(), b.numpy(), c.numpy()
            t0 = clock()
            plan = ot.emd(an, bn, cn, numItermax=10**7)
            t_emd = clock() - t0
            opt = float((plan * cn).sum())
            print(f"| {n} | {d} | POT emd | {t_emd:.3g} s | {t_emd:.3g} s | 0 | 0 of 1 |", flush=True)
            for name, method in methods(a, b, c).items():
                if args.methods and not any(m in name for m in args.methods):
                    continue
                rec = scan(method, a, b, c, opt, clock, args.max_seconds)
                cells = summarise(method, rec, footnotes, f"n={n} d={d} {name}")
                print(f"| {n} | {d} | {name} | " + " | ".join(cells) + " |", flush=True)
    if footnotes:
        print("\nInvalid outputs (reg: regularisation; K: the ladder values of the runs concerned):")
        for i, text in enumerate(footnotes, 1):
            print(f"[{i}] {text}")
    print(f"\nload average at end {os.getloadavg()[0]:.2f} (2-core machine shared with other jobs: times are noisy)")


if __name__ == "__main__":
    main()
