"""Speed of one dense Sinkhorn / IPOT iteration: ours against POT and geomloss, and the memory-bandwidth floor.

Identical inputs for every method: n points against n points, uniform in [0, 1]^16, squared-Euclidean cost
normalised to max 1, uniform weights, epsilon = 0.05 (large enough that no kernel entry is subnormal, so the
timings measure the iteration and not denormal arithmetic). Times are per iteration, from the difference of two
runs with N1 and N2 fixed iterations (so set-up work such as computing the kernel cancels). Methods are run
interleaved (round r: A(N1), A(N2), B(N1), B(N2), ...) so that load from other jobs hits every method alike;
per iteration = (min T(N2) - min T(N1)) / (N2 - N1), minima over the rounds; ratios are taken between these. With
``--threads 1`` the clock is this thread's CPU time (``time.thread_time``: descheduling by other jobs does not
count; POT's numpy BLAS is held to the same thread count through threadpoolctl), otherwise wall time. The load
average is printed beside the figures. Nothing here is asserted: it prints figures.

Floor: the unfused two-pass definition. A dense Sinkhorn iteration as two mat-vecs reads the n x m kernel twice
(K v and K^T u); an IPOT iteration must at least read G and Gamma and write Gamma (3 passes, the mat-vecs fused
in). The floor is those bytes divided by the copy bandwidth measured here on an n x m buffer (bytes read +
written per second), i.e. the time of one n x m copy for Sinkhorn. Our CPU iterations are fused over row blocks
(entropic.FUSED_BLOCK_BYTES: K is streamed from memory once per iteration, each block used twice from cache),
so "x floor" can go below 1 for Sinkhorn; for IPOT the fused pass is the floor's 3 passes.

IPOT runs with its stopping certificate off (``tol_marginal=-1``): the certificate (a c-transform, several n x m
passes) is computed every ~10 % of the iterations, which in a 200-iteration window is every 10 iterations and
would be timed as part of the iteration; over a run of thousands of iterations it adds a few per cent.

``--baseline FILE`` also times another copy of entropic.py (e.g. ``git show HEAD:plugins/discrete/entropic.py >
/tmp/entropic_head.py``) in the same process and rounds, for before / after tables.

geomloss (``SamplesLoss("sinkhorn", backend="tensorized")``) runs an epsilon-scaling schedule of log-domain
symmetric updates; its time per iteration is its total time divided by the length of that schedule (only
roughly comparable: each of its iterations does two log-sum-exp passes over the cost).

    python benchmarks/discrete_speed.py --quick            # < 1 minute on 2 CPU cores
    python benchmarks/discrete_speed.py --threads 1 --sizes 1000 2000 4000 --table --baseline /tmp/entropic_head.py
    python benchmarks/discrete_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import os
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from otbench_plugins.discrete.entropic import ipot_solve, sinkhorn_solve

EPS = 0.05


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int,
          clock: Callable[[], float] = time.perf_counter) -> float:
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = clock()
        fn()
        _sync(device)
        best = min(best, clock() - t0)
    return best


def per_iteration(run: Callable[[int], object], n1: int, n2: int, device: torch.device, repeats: int) -> float:
    """Seconds per iteration: (T(n2) - T(n1)) / (n2 - n1)."""
    run(2)  # warm-up (allocator, BLAS threads, CUDA context)
    t1 = timed(lambda: run(n1), device, repeats)
    t2 = timed(lambda: run(n2), device, repeats)
    return max(t2 - t1, 1e-12) / (n2 - n1)


def copy_bandwidth(numel: int, dtype: torch.dtype, device: torch.device, repeats: int = 7, inner: int = 10,
                   clock: Callable[[], float] = time.perf_counter) -> float:
    """Bytes moved (read + write) per second by a plain copy of an n x m buffer (best of ``repeats``)."""
    src = torch.rand(numel, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)

    def copies() -> None:
        for _ in range(inner):
            dst.copy_(src)

    t = timed(copies, device, repeats, clock) / inner
    return 2 * numel * src.element_size() / t


def make_input(n: int, dtype: torch.dtype, device: torch.device):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 16, generator=g, dtype=torch.float64)
    y = torch.rand(n, 16, generator=g, dtype=torch.float64)
    c = torch.cdist(x, y).square()
    scale = float(c.max())
    c = c / scale
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    xs, ys = x / math.sqrt(scale), y / math.sqrt(scale)
    return [t.to(device, dtype) for t in (a, a.clone(), c, xs, ys)]


def methods(a, b, c, x, y, device: torch.device, with_geomloss: bool) -> dict[str, tuple[Callable[[int], object], int]]:
    """name -> (run(iterations), dense passes of the floor)."""
    import ot

    out: dict[str, tuple[Callable[[int], object], int]] = {
        "ours sinkhorn kernel": (lambda k: sinkhorn_solve(a, b, c, EPS, method="kernel", max_iter=k, tol=-1.0,
                                                          trace=False), 2),
        "ours sinkhorn stabilized": (lambda k: sinkhorn_solve(a, b, c, EPS, method="stabilized", max_iter=k,
                                                              tol=-1.0, trace=False), 2),
        "ours ipot (L=1)": (lambda k: ipot_solve(a, b, c, beta=0.1, max_iter=k, tol=-1.0, tol_marginal=-1.0,
                                                 trace=False), 3),
    }
    kw = {"stopThr": 0.0, "warn": False}
    out["POT torch sinkhorn"] = (lambda k: ot.sinkhorn(a, b, c, EPS, method="sinkhorn", numItermax=k, **kw), 2)
    out["POT torch sinkhorn_log"] = (lambda k: ot.sinkhorn(a, b, c, EPS, method="sinkhorn_log", numItermax=k, **kw), 2)
    if device.type == "cpu":
        an, bn, cn = (t.cpu().numpy() for t in (a, b, c))
        out["POT numpy sinkhorn"] = (lambda k: ot.sinkhorn(an, bn, cn, EPS, method="sinkhorn", numItermax=k, **kw), 2)
        out["POT numpy sinkhorn_log"] = (lambda k: ot.sinkhorn(an, bn, cn, EPS, method="sinkhorn_log",
                                                               numItermax=k, **kw), 2)
    if with_geomloss:
        out["geomloss tensorized (eps-scaling)"] = (None, 2)  # type: ignore[assignment]
    return out


def geomloss_per_iteration(a, x, y, device: torch.device, repeats: int) -> tuple[float, int]:
    """geomloss total time / schedule length, with blur chosen so that its final epsilon is EPS on our cost."""
    from geomloss import SamplesLoss
    from geomloss._legacy.sinkhorn_divergence import epsilon_schedule

    # geomloss's p=2 cost is |x - y|^2 / 2 = C / 2 on our normalised points; eps on C <-> eps / 2 on C / 2
    blur = math.sqrt(EPS / 2)
    diameter = float(torch.cdist(x, y).max())
    steps = len(epsilon_schedule(2, diameter, blur, 0.9))
    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=0.9, debias=False, backend="tensorized",
                       diameter=diameter)
    loss(a, x, a, y)
    t = timed(lambda: loss(a, x, a, y), device, repeats)
    return t / steps, steps


def interleaved_per_iteration(runs: dict[str, Callable[[int], object]], n1: int, n2: int, rounds: int,
                              clock: Callable[[], float], device: torch.device) -> dict[str, float]:
    """(min T(n2) - min T(n1)) / (n2 - n1) per method, each min over ``rounds``, methods interleaved in each round.

    Minima, not medians: the set-up of every run (n x m allocations: page faults, zeroing) and other jobs only
    ever add time, and at large n a single slow set-up is worth many iterations.
    """
    for run in runs.values():
        run(2)  # warm-up (allocator, BLAS threads, CUDA context)
    short: dict[str, list[float]] = {name: [] for name in runs}
    long: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            _sync(device)
            t0 = clock()
            run(n1)
            _sync(device)
            t1 = clock()
            run(n2)
            _sync(device)
            short[name].append(t1 - t0)
            long[name].append(clock() - t1)
    return {name: max(min(long[name]) - min(short[name]), 1e-12) / (n2 - n1) for name in runs}


def load_baseline(path: str):
    """Import another copy of entropic.py (the code before a change) as a module."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("entropic_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["entropic_baseline"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def issue_table(sizes: list[int], device: torch.device, rounds: int, n1: int, n2: int, clock, baseline) -> None:
    """The issue-15 table: ours kernel vs POT numpy vs the floor, IPOT and stabilised relative to ours kernel."""
    import ot

    cols = ["n", "dtype", "threads", "ours kernel ms", "POT numpy ms", "ours / POT", "ours / floor",
            "IPOT / ours kernel", "IPOT / IPOT floor", "stabilized / kernel"]
    if baseline is not None:
        cols += ["before kernel ms", "before IPOT ms", "before / POT", "before IPOT / before kernel"]
    cols.append("load")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for n in sizes:
        for dtype in (torch.float64, torch.float32):
            a, b, c, _, _ = make_input(n, dtype, device)
            an, bn, cn = (t.cpu().numpy() for t in (a, b, c))
            kw = {"stopThr": 0.0, "warn": False}
            runs = {
                "kernel": lambda k: sinkhorn_solve(a, b, c, EPS, method="kernel", max_iter=k, tol=-1.0, trace=False),
                "stabilized": lambda k: sinkhorn_solve(a, b, c, EPS, method="stabilized", max_iter=k, tol=-1.0,
                                                       trace=False),
                "ipot": lambda k: ipot_solve(a, b, c, beta=0.1, max_iter=k, tol=-1.0, tol_marginal=-1.0,
                                             trace=False),
                "pot": (lambda k: ot.sinkhorn(an, bn, cn, EPS, method="sinkhorn", numItermax=k, **kw))
                if device.type == "cpu" else
                (lambda k: ot.sinkhorn(a, b, c, EPS, method="sinkhorn", numItermax=k, **kw)),
            }
            if baseline is not None:
                runs["before kernel"] = lambda k: baseline.sinkhorn_solve(a, b, c, EPS, method="kernel", max_iter=k,
                                                                          tol=-1.0, trace=False)
                runs["before ipot"] = lambda k: baseline.ipot_solve(a, b, c, beta=0.1, max_iter=k, tol=-1.0,
                                                                    tol_marginal=-1.0, trace=False)
            bw = copy_bandwidth(n * n, dtype, device, clock=clock)
            t = interleaved_per_iteration(runs, n1, n2, rounds, clock, device)
            floor = 2 * n * n * c.element_size() / bw
            row = [str(n), str(dtype)[6:], str(torch.get_num_threads()), f"{1e3 * t['kernel']:.3f}",
                   f"{1e3 * t['pot']:.3f}", f"{t['kernel'] / t['pot']:.2f}", f"{t['kernel'] / floor:.2f}",
                   f"{t['ipot'] / t['kernel']:.2f}", f"{t['ipot'] / (1.5 * floor):.2f}",
                   f"{t['stabilized'] / t['kernel']:.2f}"]
            if baseline is not None:
                row += [f"{1e3 * t['before kernel']:.3f}", f"{1e3 * t['before ipot']:.3f}",
                        f"{t['before kernel'] / t['pot']:.2f}", f"{t['before ipot'] / t['before kernel']:.2f}"]
            row.append(f"{os.getloadavg()[0]:.1f}")
            print("| " + " | ".join(row) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 1000 only, few iterations (< 1 minute on 2 cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (minimum kept)")
    parser.add_argument("--table", action="store_true", help="only the issue-15 summary table (Markdown)")
    parser.add_argument("--baseline", default=None, help="another entropic.py to time alongside (before/after)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(args.threads, user_api="blas")  # POT's numpy BLAS on as many threads as torch
        except ImportError:
            pass
    device = torch.device(args.device)
    sizes = args.sizes or ([1000] if args.quick else [1000, 2000, 4000])
    n1, n2 = (10, 60) if args.quick else (20, 220)
    n1_slow, n2_slow = (2, 6) if args.quick else (5, 25)
    rounds = args.rounds or (3 if args.quick else 5)
    cpu_clock = device.type == "cpu" and torch.get_num_threads() == 1
    clock = time.thread_time if cpu_clock else time.perf_counter
    print(f"device={device} threads={torch.get_num_threads()} epsilon={EPS} d=16 uniform; ms per iteration, best "
          f"of {rounds} interleaved rounds; clock={'thread CPU time' if cpu_clock else 'wall'}; "
          f"load average {os.getloadavg()[0]:.2f} (shared machine: figures are noisy); floor = dense passes x n^2 x "
          f"bytes / copy bandwidth")
    if args.table:
        baseline = load_baseline(args.baseline) if args.baseline else None
        issue_table(sizes, device, rounds, n1, n2, clock, baseline)
        return
    header = f"{'n':>5} {'dtype':>7} {'method':34s} {'ms/iter':>9} {'x floor':>8} {'x POT':>7}"
    print(header)
    print("-" * len(header))
    for n in sizes:
        for dtype in (torch.float64, torch.float32):
            a, b, c, x, y = make_input(n, dtype, device)
            bw = copy_bandwidth(n * n, dtype, device, clock=clock)
            item = c.element_size()
            fast, slow, passes, rows = {}, {}, {}, []
            for name, (run, npass) in methods(a, b, c, x, y, device, with_geomloss=True).items():
                passes[name] = npass
                if run is None:
                    try:
                        sec, steps = geomloss_per_iteration(a, x, y, device, 3)
                        rows.append((f"{name}[{steps} it]", sec, npass * n * n * item / bw))
                    except Exception as exc:
                        print(f"{n:>5} {str(dtype)[6:]:>7} {name:34s} failed: {type(exc).__name__}: {exc}")
                    continue
                (slow if "log" in name else fast)[name] = run
            for group, (m1, m2) in ((fast, (n1, n2)), (slow, (n1_slow, n2_slow))):
                try:
                    times = interleaved_per_iteration(group, m1, m2, rounds, clock, device)
                except Exception as exc:  # one broken comparison should not hide the others
                    print(f"{n:>5} {str(dtype)[6:]:>7} failed: {type(exc).__name__}: {exc}")
                    continue
                rows += [(name, sec, passes[name] * n * n * item / bw) for name, sec in times.items()]
            own = {r[0]: r[1] for r in rows}
            pot = own.get("POT numpy sinkhorn") or own.get("POT torch sinkhorn")
            for name, sec, floor in rows:
                ratio = f"{sec / pot:7.2f}" if pot else "      -"
                print(f"{n:>5} {str(dtype)[6:]:>7} {name:34s} {1e3 * sec:9.3f} {sec / floor:8.2f} {ratio}")
            print(f"{n:>5} {str(dtype)[6:]:>7} {'(copy bandwidth GB/s)':34s} {bw / 1e9:9.2f}")
            if "ours sinkhorn kernel" in own and "ours sinkhorn stabilized" in own:
                print(f"{n:>5} {str(dtype)[6:]:>7} {'(stabilized / kernel)':34s} "
                      f"{own['ours sinkhorn stabilized'] / own['ours sinkhorn kernel']:9.2f}")
            print(f"{'':>5} {'':>7} (load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
