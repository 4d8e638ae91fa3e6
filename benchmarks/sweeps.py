"""Many sweeps on one pool: 2 and 4 sweeps at once against one sweep of the same total rows.

    python benchmarks/sweeps.py [--rows 64] [--seconds 0.05] [--repeats 3]

One decorated function, ``chunk_size=2``: one sweep of ``rows`` calls of ``seconds`` each,
then the same rows split into 2 and into 4 sweeps run at once from as many threads (the
actors are shared, free ones going to the sweeps in turn). Prints the median wall time and
driver CPU per row of each, and the ratios to the single sweep (goal: wall ≈ 1.0, driver CPU
per row unchanged). Also the same split with tiny calls (``2*x``), where the driver's own
cost per row dominates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import ray

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import workloads  # noqa: E402

from thread_chunks import chunked  # noqa: E402


def sweeps(f: object, rows: list[list[float]], parts: int) -> tuple[float, float]:
    """Wall and process CPU seconds of ``rows`` run as ``parts`` sweeps at once."""
    chunks = [rows[k::parts] for k in range(parts)]
    wall, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=f.map, args=(chunk,))  # type: ignore[attr-defined]
               for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(title: str, func: object, rows: list[list[float]], repeats: int) -> None:
    f = chunked(chunk_size=2, progress_bar=False)(func)  # type: ignore[type-var]
    f.map(rows[:8])  # actors started
    print(f"\n{title}: {len(rows)} rows, 2 actors, median of {repeats}")
    print(f"{'sweeps at once':>15} {'wall s':>8} {'x one':>6} {'CPU ms/row':>11} {'x one':>6}")
    base: tuple[float, float] | None = None
    for parts in (1, 2, 4):
        runs = [sweeps(f, rows, parts) for _ in range(repeats)]
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs) / len(rows) * 1000
        base = base or (wall, cpu)
        print(f"{parts:>15} {wall:>8.3f} {wall / base[0]:>6.2f} {cpu:>11.3f} "
              f"{cpu / base[1]:>6.2f}")
    f.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=0.05)
    parser.add_argument("--tiny", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ray.init(num_cpus=2, address="local", include_dashboard=False, log_to_driver=False)
    try:
        measure(f"sleeps of {args.seconds} s", workloads.nap,
                [[args.seconds] for _ in range(args.rows)], args.repeats)
        measure("tiny calls (2*x)", workloads.double,
                [[float(i)] for i in range(args.tiny)], args.repeats)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
