"""Training steps per second of each W1 dual-critic solver (plugins/critics.py), CPU and (when present) GPU.

Every solver runs its own training loop on the same task (gaussian_shift), the same critic size, batch and
dimension; the rate is measured between the first trace checkpoint (after a warm-up) and the last one, so
set-up and the final W1 evaluation are excluded. Prints a table.

    python benchmarks/critic_speed.py            # 30 warm-up + 300 timed steps per solver
    python benchmarks/critic_speed.py --quick    # 5 + 30 steps
    python benchmarks/critic_speed.py --dim 16 --batch 256 --threads 2 --devices cpu
"""

from __future__ import annotations

import argparse
import platform

import torch

from otbench_plugins.w1.closed_form import GaussianShift
from otbench_plugins.w1.critics import CRITIC_SOLVERS
from otbench_plugins.nets import critic_width


def steps_per_second(cls: type, device: torch.device, dim: int, batch: int, width: int | None, warmup: int,
                     steps: int, seed: int = 0) -> float:
    """Timed steps / seconds between the warm-up checkpoint and the last checkpoint of ``cls``'s loop."""
    problem, _ = GaussianShift(dim=dim, shift=2.0).build(seed, device, torch.float32)
    solver = cls(iterations=warmup + steps, batch_size=batch, width=width, trace_every=warmup, eval_samples=1024)
    trace = solver.solve(problem).trace
    first, last = trace[0], trace[-1]
    return (last["iteration"] - first["iteration"]) / (last["time"] - first["time"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 warm-up + 30 timed steps per solver")
    ap.add_argument("--dim", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1024, help="published: 1024")
    ap.add_argument("--width", type=int, default=None, help="hidden width (default: published max(2D, 128))")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 300, --quick 30)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (the solvers declare threads = 1)")
    ap.add_argument("--devices", default="auto", help="comma list of cpu/cuda; auto = cpu and cuda if present")
    ap.add_argument("--solvers", default=None, help="comma list of solver names (default: all)")
    args = ap.parse_args(argv)

    warmup = 5 if args.quick else 30
    steps = args.steps or (30 if args.quick else 300)
    if args.devices == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    chosen = [c for c in CRITIC_SOLVERS if args.solvers is None or c.name in args.solvers.split(",")]
    torch.set_num_threads(args.threads)
    width = args.width if args.width is not None else critic_width(args.dim)

    print(f"# critic training speed: dim={args.dim} width={width} depth=2 batch={args.batch} "
          f"steps={steps} (+{warmup} warm-up) threads={args.threads} torch={torch.__version__} "
          f"cpu={platform.processor() or platform.machine()}"
          + (f" gpu={torch.cuda.get_device_name(0)}" if "cuda" in devices else ""))
    rows = []
    for dev in devices:
        device = torch.device(dev)
        for cls in chosen:
            rate = steps_per_second(cls, device, args.dim, args.batch, width, warmup, steps)
            rows.append((cls.name, dev, rate))
    base = {dev: rate for name, dev, rate in rows if name == "wgan_wc"}
    print(f"{'solver':<14} {'device':<6} {'steps/s':>9} {'ms/step':>9} {'time/wc':>8}")
    for name, dev, rate in rows:
        rel = f"{base[dev] / rate:>7.2f}x" if dev in base else f"{'-':>8}"
        print(f"{name:<14} {dev:<6} {rate:>9.1f} {1e3 / rate:>9.2f} {rel}")


if __name__ == "__main__":
    main()
