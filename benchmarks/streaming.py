"""Driver memory while 100 000 calls stream through ``.imap`` from a generator.

    python benchmarks/streaming.py [--calls 100000]

thread-chunks reads the generator lazily (about two calls per actor ahead), so the driver's
RSS stays flat; ray.util.ActorPool submits the whole input before the first result. Prints
each one's RSS growth (MB) measured in the same run, and the ratio.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import ray
from ray.util import ActorPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import workloads

from thread_chunks import chunked


def rss_mb() -> float:
    gc.collect()
    return float(psutil.Process().memory_info().rss) / 2**20


def rows(n: int) -> Iterator[list[int]]:
    for i in range(n):
        yield [i]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100_000)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    double = chunked(chunk_size=2, progress_bar=False)(workloads.double)
    list(double.imap(rows(1000)))  # warm up actors and imports
    before = rss_mb()
    peak, total = before, 0
    for i, value in enumerate(double.imap(rows(args.calls))):
        total += value
        if i % 5000 == 0:
            peak = max(peak, rss_mb())
    ours = max(peak, rss_mb()) - before
    assert total == args.calls * (args.calls - 1)

    actors = [ray.remote(workloads.Worker).remote() for _ in range(2)]
    pool = ActorPool(actors)
    list(pool.map(lambda a, v: a.run.remote(v), [(workloads.double, (i,)) for i in range(1000)]))
    before = rss_mb()
    peak = before
    for i, _ in enumerate(pool.map(lambda a, v: a.run.remote(v),
                                   ((workloads.double, (j,)) for j in range(args.calls)))):
        if i % 5000 == 0:
            peak = max(peak, rss_mb())
    theirs = max(peak, rss_mb()) - before
    print(f"{args.calls} calls streamed from a generator, driver RSS growth:")
    print(f"  thread-chunks .imap:      {ours:8.1f} MB   (goal < 50 MB)")
    print(f"  ray.util.ActorPool.map:   {theirs:8.1f} MB")
    ray.shutdown()


if __name__ == "__main__":
    main()
