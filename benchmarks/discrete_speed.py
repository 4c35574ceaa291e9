"""Speed of one dense Sinkhorn / IPOT iteration: ours against POT and geomloss, and the memory-bandwidth floor.

Identical inputs for every method: n points against n points, uniform in [0, 1]^16, squared-Euclidean cost
normalised to max 1, uniform weights, epsilon = 0.05 (large enough that no kernel entry is subnormal, so the
timings measure the iteration and not denormal arithmetic). Times are per iteration, from the difference of two
runs with N1 and N2 fixed iterations (so set-up work such as computing the kernel cancels); the best of
``--repeats`` runs is kept. Nothing here is asserted: it prints figures.

Floor: a dense Sinkhorn iteration must read the n x m kernel twice (K v and K^T u); an IPOT iteration must at
least read G and Gamma and write Gamma (3 passes, the mat-vecs fused in). The floor is those bytes divided by
the copy bandwidth measured here on an n x m buffer (bytes read + written per second).

geomloss (``SamplesLoss("sinkhorn", backend="tensorized")``) runs an epsilon-scaling schedule of log-domain
symmetric updates; its time per iteration is its total time divided by the length of that schedule (only
roughly comparable: each of its iterations does two log-sum-exp passes over the cost).

    python benchmarks/discrete_speed.py --quick            # < 1 minute on 2 CPU cores
    python benchmarks/discrete_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import math
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


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def per_iteration(run: Callable[[int], object], n1: int, n2: int, device: torch.device, repeats: int) -> float:
    """Seconds per iteration: (T(n2) - T(n1)) / (n2 - n1)."""
    run(2)  # warm-up (allocator, BLAS threads, CUDA context)
    t1 = timed(lambda: run(n1), device, repeats)
    t2 = timed(lambda: run(n2), device, repeats)
    return max(t2 - t1, 1e-12) / (n2 - n1)


def copy_bandwidth(numel: int, dtype: torch.dtype, device: torch.device, repeats: int = 7, inner: int = 10) -> float:
    """Bytes moved (read + write) per second by a plain copy of an n x m buffer (best of ``repeats``)."""
    src = torch.rand(numel, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)

    def copies() -> None:
        for _ in range(inner):
            dst.copy_(src)

    t = timed(copies, device, repeats) / inner
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
        "ours ipot (L=1)": (lambda k: ipot_solve(a, b, c, beta=0.1, max_iter=k, tol=-1.0, trace=False), 3),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 1000 only, few iterations (< 1 minute on 2 cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = args.sizes or ([1000] if args.quick else [1000, 2000, 4000])
    n1, n2 = (10, 60) if args.quick else (20, 200)
    n1_slow, n2_slow = (2, 6) if args.quick else (5, 25)
    repeats = 3 if args.quick else 5
    print(f"device={device} threads={torch.get_num_threads()} epsilon={EPS} d=16 uniform; "
          f"ms per iteration, best of {repeats}; floor = dense passes x n^2 x bytes / copy bandwidth")
    header = f"{'n':>5} {'dtype':>7} {'method':34s} {'ms/iter':>9} {'x floor':>8} {'x POT':>7}"
    print(header)
    print("-" * len(header))
    for n in sizes:
        for dtype in (torch.float64, torch.float32):
            a, b, c, x, y = make_input(n, dtype, device)
            bw = copy_bandwidth(n * n, dtype, device)
            item = c.element_size()
            rows = []
            for name, (run, passes) in methods(a, b, c, x, y, device, with_geomloss=True).items():
                floor = passes * n * n * item / bw
                try:
                    if run is None:
                        sec, steps = geomloss_per_iteration(a, x, y, device, repeats)
                        name = f"{name}[{steps} it]"
                    elif "log" in name:
                        sec = per_iteration(run, n1_slow, n2_slow, device, repeats)
                    else:
                        sec = per_iteration(run, n1, n2, device, repeats)
                except Exception as exc:  # one broken comparison should not hide the others
                    print(f"{n:>5} {str(dtype)[6:]:>7} {name:34s} failed: {type(exc).__name__}: {exc}")
                    continue
                rows.append((name, sec, floor))
            pot = dict((r[0], r[1]) for r in rows).get("POT numpy sinkhorn") or dict(
                (r[0], r[1]) for r in rows).get("POT torch sinkhorn")
            for name, sec, floor in rows:
                ratio = f"{sec / pot:7.2f}" if pot else "      -"
                print(f"{n:>5} {str(dtype)[6:]:>7} {name:34s} {1e3 * sec:9.3f} {sec / floor:8.2f} {ratio}")
            print(f"{n:>5} {str(dtype)[6:]:>7} {'(copy bandwidth GB/s)':34s} {bw / 1e9:9.2f}")
            own = {r[0]: r[1] for r in rows}
            if "ours sinkhorn kernel" in own and "ours sinkhorn stabilized" in own:
                print(f"{n:>5} {str(dtype)[6:]:>7} {'(stabilized / kernel)':34s} "
                      f"{own['ours sinkhorn stabilized'] / own['ours sinkhorn kernel']:9.2f}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
