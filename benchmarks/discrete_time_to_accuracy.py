"""Time to accuracy on dense discrete OT: ours (Sinkhorn kernel / stabilised, IPOT) against POT's ``ot.sinkhorn``
(``sinkhorn``, ``sinkhorn_stabilized``, ``sinkhorn_epsilon_scaling``) and ``ot.emd``.

Problems: n points against n points, uniform in [0, 1]^d (d = 2 and 16), uniform weights, squared-Euclidean cost
normalised to max 1, float64 everywhere, seed 0. LP optimum ``OPT`` from ``ot.emd2`` (exact network simplex).

Accuracy of a plan P: ``gap = (<C, round(P)> - OPT) / OPT`` where ``round`` is the Altschuler-Weed-Rigollet
rounding onto U(a, b) (otbench.metrics.lp.round_to_polytope), so that an unconverged plan is not credited with
its marginal violation. Targets: gap <= 1e-4 and <= 1e-6.

Protocol (identical for every iterative method): for each regularisation in the method's ladder (epsilon for
Sinkhorn, beta for IPOT) and for each iteration budget K in a doubling ladder, run the solver from scratch
for exactly K iterations (stopping rules off: ``tol=-1`` / ``stopThr=0``) and record (time, gap). For
``sinkhorn_epsilon_scaling`` K is POT's ``numItermax`` (outer epsilon steps, each up to
``numInnerItermax=100`` stabilised iterations). A regularisation's ladder stops once its gap is <= 1e-6, stops
improving from K >= 800 on (gap > 0.99 x the previous: the entropic bias floor), raises (kernel underflow), or
one run exceeds ``--max-seconds`` (so "not reached" means: not within that budget per run). The time
to a target is the smallest recorded time among runs that reached it, with the (regularisation, K) that did;
otherwise "not reached" and the best gap seen. ``emd`` is timed once (gap 0 up to round-off). Ours runs with
``trace=False`` (no monitoring) and our stabilised method's default epsilon ramp. Times are CPU seconds of this
thread (``time.thread_time``) when ``--threads 1``, wall seconds otherwise; the machine load average is printed.
Nothing is asserted: it prints Markdown tables.

    python benchmarks/discrete_time_to_accuracy.py --quick          # n = 500, about a minute on 2 cores
    python benchmarks/discrete_time_to_accuracy.py --sizes 500 1000 2000 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from otbench.metrics.lp import plan_cost, round_to_polytope
from otbench_plugins.discrete.entropic import ipot_solve, sinkhorn_solve

TARGETS = (1e-4, 1e-6)
EPS_LADDER = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
BETA_LADDER = (0.1, 0.03)
ITER_LADDER = tuple(25 * 2**k for k in range(10))  # 25 ... 12800
OUTER_LADDER = tuple(2**k for k in range(1, 8))  # 2 ... 128 outer steps of epsilon scaling
STALL_AFTER = 800  # a ladder may stop for lack of progress only from this many iterations on


def make_problem(n: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    y = torch.rand(n, d, generator=g, dtype=torch.float64)
    c = torch.cdist(x, y).square()
    c = c / c.max()
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    return a, a.clone(), c


def methods(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> dict[str, tuple[tuple[float, ...], tuple[int, ...],
                                                                                  Callable[[float, int], object]]]:
    """name -> (regularisation ladder, iteration ladder, run(reg, K) -> plan)."""
    import ot

    an, bn, cn = a.numpy(), b.numpy(), c.numpy()
    kw = {"stopThr": 0.0, "warn": False}
    return {
        "ours sinkhorn kernel": (EPS_LADDER, ITER_LADDER, lambda e, k: sinkhorn_solve(
            a, b, c, e, method="kernel", max_iter=k, tol=-1.0, trace=False).plan),
        "ours sinkhorn stabilized": (EPS_LADDER, ITER_LADDER, lambda e, k: sinkhorn_solve(
            a, b, c, e, method="stabilized", max_iter=k, tol=-1.0, trace=False).plan),
        "ours ipot": (BETA_LADDER, ITER_LADDER, lambda beta, k: ipot_solve(
            a, b, c, beta=beta, max_iter=k, tol=-1.0, tol_marginal=-1.0, trace=False).plan),
        "POT sinkhorn": (EPS_LADDER, ITER_LADDER, lambda e, k: ot.sinkhorn(
            an, bn, cn, e, method="sinkhorn", numItermax=k, **kw)),
        "POT sinkhorn_stabilized": (EPS_LADDER, ITER_LADDER, lambda e, k: ot.sinkhorn(
            an, bn, cn, e, method="sinkhorn_stabilized", numItermax=k, **kw)),
        "POT sinkhorn_epsilon_scaling": (EPS_LADDER, OUTER_LADDER, lambda e, k: ot.sinkhorn(
            an, bn, cn, e, method="sinkhorn_epsilon_scaling", numItermax=k, **kw)),
    }


def gap_of(plan, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, opt: float) -> float:
    p = torch.as_tensor(np.asarray(plan) if not isinstance(plan, torch.Tensor) else plan, dtype=torch.float64)
    if not torch.isfinite(p).all():
        return float("inf")
    return (plan_cost(round_to_polytope(p, a, b), c) - opt) / opt


def scan(run: Callable[[float, int], object], regs, iters, a, b, c, opt: float, clock, max_seconds: float):
    """All (reg, K, seconds, gap) runs of the protocol in the module docstring."""
    records = []
    for reg in regs:
        prev = float("inf")
        for k in iters:
            t0 = clock()
            try:
                plan = run(reg, k)
            except Exception:  # e.g. kernel Sinkhorn underflow at small epsilon: this setting is out
                break
            sec = clock() - t0
            gap = gap_of(plan, a, b, c, opt)
            records.append((reg, k, sec, gap))
            if gap <= TARGETS[-1] or (k >= STALL_AFTER and gap > 0.99 * prev) or sec > max_seconds:
                break
            prev = gap
    return records


def summarise(records) -> list[str]:
    cells = []
    for target in TARGETS:
        hits = [r for r in records if r[3] <= target]
        if hits:
            reg, k, sec, _ = min(hits, key=lambda r: r[2])
            cells.append(f"{sec:.3g} s ({reg:g}, {k})")
        else:
            best = min((r[3] for r in records), default=float("inf"))
            cells.append(f"not reached (best {best:.2g})")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 500 only")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--dims", type=int, nargs="*", default=[2, 16])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="stop a ladder after a run this long")
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
    print(f"threads={args.threads} clock={'thread CPU time' if args.threads == 1 else 'wall'} "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print("cell: time to gap (regularisation, iterations of the fastest setting that reached it)\n")
    print("| n | d | method | to 1e-4 | to 1e-6 | best gap |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        for d in args.dims:
            a, b, c = make_problem(n, d)
            an, bn, cn = a.numpy(), b.numpy(), c.numpy()
            t0 = clock()
            plan = ot.emd(an, bn, cn, numItermax=10**7)
            t_emd = clock() - t0
            opt = float((plan * cn).sum())
            print(f"| {n} | {d} | POT emd | {t_emd:.3g} s | {t_emd:.3g} s | 0 |", flush=True)
            for name, (regs, iters, run) in methods(a, b, c).items():
                rec = scan(run, regs, iters, a, b, c, opt, clock, args.max_seconds)
                best = min((r[3] for r in rec), default=float("inf"))
                print(f"| {n} | {d} | {name} | " + " | ".join(summarise(rec)) + f" | {best:.2g} |", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f} (2-core machine shared with other jobs: times are noisy)")


if __name__ == "__main__":
    main()
