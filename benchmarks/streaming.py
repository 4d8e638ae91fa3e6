"""Driver memory while 100 000 calls stream through ``.imap`` from a generator.

    python benchmarks/streaming.py [--calls 100000] [--head-seconds 3]

1. thread-chunks reads the generator lazily (about two calls per actor ahead), so the
   driver's RSS stays flat; ray.util.ActorPool submits the whole input before the first
   result. Prints each one's RSS growth (MB) measured in the same run.
2. Slow head: the same number of ~1 KB rows through ordered ``.imap``, where row 0 sleeps
   3 s while the other actor races through the rest. Its results are held back behind row
   0, so only the read-ahead bound (``max_buffered``, by default 4 x chunk_size x batch size)
   keeps the driver from reading the whole generator. Prints the driver's peak RSS growth
   (sampled every 10 ms) and the most rows read from the generator but not yet received.
3. Late actor: the same rows, but one of the two actors takes 3 s to start (a cold worker):
   the rows must not pile up for it. Same two numbers.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import ray
from ray.util import ActorPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import workloads
from rss import PeakRSS

from thread_chunks import LabelledActor, chunked
from thread_chunks._run import _MAX_BATCH

CHUNK_SIZE = 2
DEFAULT_BOUND = 4 * CHUNK_SIZE * _MAX_BATCH  # max_buffered's default at the largest batch


def rss_mb() -> float:
    gc.collect()
    return float(psutil.Process().memory_info().rss) / 2**20


def rows(n: int) -> Iterator[list[int]]:
    for i in range(n):
        yield [i]


class Tracked:
    """Rows from a generator that records the most rows pulled but not yet received."""

    def __init__(self) -> None:
        self.pulled = self.received = self.ahead = 0

    def rows(self, n: int, seconds: float) -> Iterator[list[Any]]:
        for i in range(n):
            self.pulled += 1
            self.ahead = max(self.ahead, self.pulled - self.received)
            yield [i, i.to_bytes(8, "little") * 128, seconds]  # a fresh ~1 KB payload


class LateSecond(LabelledActor):
    """The first actor to start (per ``marker`` folder, set by a subclass) starts at once;
    the others take ``delay`` seconds."""

    marker = ""
    delay = 3.0

    def __init__(self, func: Any) -> None:
        super().__init__(func)
        try:
            os.close(os.open(os.path.join(self.marker, "first"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            time.sleep(self.delay)


def held_back(f: Any, calls: int, head_seconds: float) -> tuple[float, int, float]:
    """Stream ``calls`` rows through ordered ``f.imap``; row 0 sleeps ``head_seconds``.
    Returns the driver's peak RSS growth (MB), the most rows read ahead and the wall time."""
    tracked = Tracked()
    start = time.perf_counter()
    with PeakRSS() as peak:
        for i, value in enumerate(f.imap(tracked.rows(calls, head_seconds))):
            tracked.received += 1
            assert value == i + 1024, (i, value)
    assert tracked.received == calls
    return peak.rss, tracked.ahead, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--head-seconds", type=float, default=3.0)
    args = parser.parse_args()
    ray.init(num_cpus=2, address="local", include_dashboard=False, log_to_driver=False)

    double = chunked(chunk_size=CHUNK_SIZE, progress_bar=False)(workloads.double)
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
    for actor in actors:
        ray.kill(actor)
    double.close()

    head = chunked(chunk_size=CHUNK_SIZE, progress_bar=False)(workloads.head_sleeps)
    list(head.imap(Tracked().rows(1000, 0.0)))  # warm up both actors
    grown, ahead, wall = held_back(head, args.calls, args.head_seconds)
    head.close()
    print(f"\nslow head: {args.calls} rows of ~1 KB through ordered .imap, row 0 sleeps "
          f"{args.head_seconds:g} s ({wall:.1f} s in all):")
    print(f"  driver RSS growth:                        {grown:8.1f} MB   (goal < 50 MB)")
    print(f"  rows read but not yet received, at most:  {ahead:8d}      (bound: max_buffered "
          f"= 4 x chunk_size {CHUNK_SIZE} x batch <= {_MAX_BATCH} = {DEFAULT_BOUND}) "
          f"-> {'PASS' if ahead <= DEFAULT_BOUND else 'FAIL'}")

    with tempfile.TemporaryDirectory() as folder:
        class Late(LateSecond):
            marker = folder

        late = chunked(chunk_size=CHUNK_SIZE, progress_bar=False,
                       actor_cls=Late)(workloads.head_sleeps)
        grown, ahead, wall = held_back(late, args.calls, 0.0)  # actors start inside
        late.close()
    print(f"\nlate actor: the same rows, no slow row, one of the 2 actors takes "
          f"{LateSecond.delay:g} s to start, measured from the first row ({wall:.1f} s in all):")
    print(f"  driver RSS growth:                        {grown:8.1f} MB   (goal < 50 MB)")
    print(f"  rows read but not yet received, at most:  {ahead:8d}      (same bound "
          f"{DEFAULT_BOUND}) -> {'PASS' if ahead <= DEFAULT_BOUND else 'FAIL'}")
    ray.shutdown()


if __name__ == "__main__":
    main()
