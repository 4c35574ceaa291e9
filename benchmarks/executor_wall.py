"""Wall time of one suite under each executor choice (a fresh results folder each time).

    .venv/bin/python benchmarks/executor_wall.py [SUITE] [--modes "jobs1,auto,ray"] [--repeat 1]

Modes: ``jobs1`` (``--jobs 1``: in-process), ``auto`` (the default ``--jobs auto``), ``process`` (``--executor
process``), ``ray`` (``--executor ray``: a private local Ray instance, started and stopped by the command).
Prints per mode the minimum wall time over ``--repeat`` runs, the executor line the command chose, and the
summed solver seconds of the records. The machine may be shared: the minimum is the least disturbed figure.
The default suite is ``suites/smoke.yaml``; the main job is ``suites/w1_continuous.yaml`` (20+ minutes a mode).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = {"jobs1": ["--jobs", "1"], "auto": [], "process": ["--executor", "process"], "ray": ["--executor", "ray"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", nargs="?", default=str(ROOT / "suites" / "smoke.yaml"))
    parser.add_argument("--modes", default="jobs1,auto,ray")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for mode in args.modes.split(","):
        walls, line, solver_s, n = [], "", 0.0, 0
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "otbench.cli", "run", args.suite, "--results-dir", tmp,
                                       *MODES[mode]], cwd=ROOT, capture_output=True, text=True)
                walls.append(time.perf_counter() - start)
                if proc.returncode != 0:
                    print(f"{mode}: exit code {proc.returncode}\n{proc.stderr[-2000:]}")
                    break
                line = next((x.split("executor: ", 1)[1] for x in proc.stderr.splitlines() if "executor: " in x), "")
                records = [json.loads(x) for x in (Path(tmp) / "records.jsonl").read_text().splitlines()]
                n = len(records)
                solver_s = sum(r.get("seconds") or 0.0 for r in records)
        if walls:
            print(f"{mode:8s} wall {min(walls):7.1f} s   {n} runs, solver seconds {solver_s:7.1f}   executor: {line}")


if __name__ == "__main__":
    main()
