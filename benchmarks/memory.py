"""Learned memory admission under Ray's memory monitor: no guessing of chunk_size.

    python benchmarks/memory.py [--calls 12] [--gb 1.5] [--seconds 2] [--threshold 0.4]

``calls`` calls each holding ``gb`` GB for ``seconds``, in a fresh Ray whose memory monitor
kills above ``threshold`` of this machine (``RAY_memory_usage_threshold``), each case in a
fresh driver process:

- ``chunk_size=6``, memory learned (the default ``memory_budget="auto"``);
- ``chunk_size=6`` without admission (``memory_budget=None``): the guess too high;
- ``chunk_size=4`` without admission: the best fixed guess on this machine at 1.5 GB.

Prints wall time (from the first call sent: the actors' start is in it, alike in every case),
the ratio to the fixed ``chunk_size=4``, workers killed, the most calls at once and the
measured peak of a call (goal: learned / fixed-4 <= 1.2 with 0 kills). Needs ``threshold`` x
this machine's memory to hold a few such calls beside what is in use. Nothing is learned
before the timed run (a warm-up of small calls would teach a small peak).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

DRIVER = """
import sys, time, warnings
sys.path.insert(0, {here!r})
import thread_chunks
from thread_chunks import chunked
from workloads import hold
calls, megabytes, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[4])
seconds = float(sys.argv[3])
budget = None if sys.argv[5] == "none" else "auto"
import ray
ray.init(num_cpus=2, include_dashboard=False)  # not timed; the actors are (alike in each case)
f = chunked(chunk_size=size, batch_size=1, progress_bar=False, memory_budget=budget)(hold)
warnings.simplefilter("ignore")
start = time.perf_counter()
out = f.map([[i, megabytes, seconds] for i in range(calls)])
wall = time.perf_counter() - start
assert out == list(range(calls)), out
print("RESULT", wall, f.stats.worker_deaths, f.stats.peak_concurrency,
      (f.stats.peak_call_memory or 0) / 1e9)
"""


def case(args: argparse.Namespace, size: int, budget: str) -> tuple[float, int, int, float]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}", "RAY_ADDRESS": "local",
           "RAY_memory_usage_threshold": str(args.threshold),
           "RAY_memory_monitor_refresh_ms": "100"}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER.format(here=str(HERE)), str(args.calls),
         str(int(args.gb * 1000)), str(args.seconds), str(size), budget],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"chunk_size={size} memory_budget={budget} failed:\n"
                         f"{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT")).split()
    return float(line[1]), int(line[2]), int(line[3]), float(line[4])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=12)
    parser.add_argument("--gb", type=float, default=1.5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threshold", type=float, default=0.4)
    args = parser.parse_args()
    print(f"{args.calls} calls of {args.gb} GB for {args.seconds} s each, Ray's memory "
          f"monitor at {args.threshold:.0%} of this machine; a fresh driver per case")
    cases = [("chunk_size=4, no admission (best fixed)", 4, "none"),
             ("chunk_size=6, learned memory (default)", 6, "auto"),
             ("chunk_size=6, no admission", 6, "none")]
    results = {name: case(args, size, budget) for name, size, budget in cases}
    base = results[cases[0][0]][0]
    print(f"{'case':<42} {'wall s':>7} {'x fixed-4':>9} {'kills':>6} {'at once':>8} "
          f"{'call GB':>8}")
    for name, (wall, kills, at_once, peak) in results.items():
        print(f"{name:<42} {wall:>7.2f} {wall / base:>9.2f} {kills:>6} {at_once:>8} "
              f"{peak:>8.2f}")


if __name__ == "__main__":
    main()
