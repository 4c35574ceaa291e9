"""How fast the command line answers, and what the harness costs per run.

    .venv/bin/python benchmarks/cli_latency.py [--repeat 5] [--skip-run]

1. ``otbench list``, ``plugins``, ``validate suites/w1_continuous.yaml``, ``--help``: each started ``--repeat``
   times as a fresh process; prints the minimum wall time and the minimum user+sys CPU time (the machine may
   be shared: the minimum is the least disturbed figure).
2. ``otbench run suites/smoke.yaml --force`` into a temporary folder: total wall, summed solver seconds, and
   the harness's per-run cost, from the records' ``finished`` times: for every run after the first, the time
   since the previous run finished minus its solver seconds (task build, metrics, store writes, progress,
   bookkeeping). The first run and the start-up (imports of torch and of each solver's libraries, suite
   validation, report) are fixed costs and printed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OTBENCH = [sys.executable, "-m", "otbench.cli"]
COMMANDS = (["list"], ["plugins"], ["validate", "suites/w1_continuous.yaml"], ["--help"])


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, user+sys CPU seconds) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-run", action="store_true")
    parser.add_argument("--validate-suite", default="suites/w1_continuous.yaml", help="the suite `validate` checks")
    args = parser.parse_args()
    env = {**os.environ, "COLUMNS": "200"}
    subprocess.run(OTBENCH + ["list"], cwd=ROOT, env=env, capture_output=True)  # warm the caches once
    print(f"{'command':45s} {'wall min (s)':>12s} {'user+sys min (s)':>17s}")
    for command in COMMANDS:
        command = [args.validate_suite if c == "suites/w1_continuous.yaml" else c for c in command]
        samples = [timed(OTBENCH + command, env) for _ in range(args.repeat)]
        print(f"{'otbench ' + ' '.join(command):45s} {min(w for w, _ in samples):12.3f} "
              f"{min(c for _, c in samples):17.3f}")
    if args.skip_run:
        return
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = timed(OTBENCH + ["run", "suites/smoke.yaml", "--results-dir", tmp, "--force"], env)
        records = [json.loads(line) for line in (Path(tmp) / "records.jsonl").read_text().splitlines() if line.strip()]
    records.sort(key=lambda r: r["finished"])
    solve = sum(r.get("seconds") or 0.0 for r in records)
    finished = [datetime.fromisoformat(r["finished"]).timestamp() for r in records]
    per_run = [(finished[i] - finished[i - 1]) - (records[i].get("seconds") or 0.0) for i in range(1, len(records))]
    print(f"\nsmoke run: {len(records)} runs, wall {wall:.2f} s (user+sys {cpu:.2f} s), solver seconds {solve:.2f}, "
          f"naive (wall - solve) / runs = {1000 * (wall - solve) / len(records):.0f} ms")
    print(f"harness per run (runs 2..{len(records)}): median {1000 * statistics.median(per_run):.1f} ms, "
          f"mean {1000 * statistics.mean(per_run):.1f} ms, max {1000 * max(per_run):.1f} ms")
    fixed = wall - solve - sum(per_run)
    print(f"fixed costs (start-up, first run's imports, validation, report): {fixed:.2f} s")


if __name__ == "__main__":
    main()
