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

2 and 3 run each in a fresh driver process (a process keeps the heap and object-store pages it
once touched, which would hide the second case's growth), and split the RSS growth into the
driver's own (anon) memory and shared pages mapped from Ray's object store: call arguments
over 100 KB (a batch of ~1 KB rows) go through the store, written by the driver.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
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
from thread_chunks._engine.batching import _MAX_BATCH

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


def held_back(f: Any, calls: int, head_seconds: float) -> dict[str, Any]:
    """Stream ``calls`` rows through ordered ``f.imap``; row 0 sleeps ``head_seconds``.
    The driver's peak RSS growth (MB: all, anon, shared; also until the first result), the
    most rows read ahead and the wall time."""
    tracked = Tracked()
    first: tuple[float, float, float] | None = None
    start = time.perf_counter()
    with PeakRSS() as peak:
        for i, value in enumerate(f.imap(tracked.rows(calls, head_seconds))):
            if first is None:  # the peak while nothing could be handed out
                first = (peak.rss, peak.anon, peak.shared)
            tracked.received += 1
            assert value == i + 1024, (i, value)
    assert tracked.received == calls
    return {"rss": peak.rss, "anon": peak.anon, "shared": peak.shared, "kernel": peak.kernel,
            "first": first, "ahead": tracked.ahead, "wall": time.perf_counter() - start}


def run_case(case: str, calls: int, head_seconds: float) -> dict[str, Any]:
    ray.init(num_cpus=2, address="local", include_dashboard=False, log_to_driver=False)
    if case == "slow-head":
        f = chunked(chunk_size=CHUNK_SIZE, progress_bar=False)(workloads.head_sleeps)
        list(f.imap(Tracked().rows(1000, 0.0)))  # warm up both actors
        result = held_back(f, calls, head_seconds)
        f.close()
        return result
    with tempfile.TemporaryDirectory() as folder:
        class Late(LateSecond):
            marker = folder

        f = chunked(chunk_size=CHUNK_SIZE, progress_bar=False, actor_cls=Late)(
            workloads.head_sleeps)
        result = held_back(f, calls, 0.0)  # the actors start inside the measurement
        f.close()
        return result


def in_child(case: str, calls: int, head_seconds: float) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--case", case, "--calls", str(calls),
                           "--head-seconds", str(head_seconds)], capture_output=True, text=True,
                          timeout=1800, env={**os.environ, "RAY_ADDRESS": "local"})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            data: dict[str, Any] = json.loads(line[7:])
            return data
    raise RuntimeError(f"case {case} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def show(title: str, r: dict[str, Any], first: str) -> None:
    print(f"\n{title} ({r['wall']:.1f} s in all):")
    goal = "met" if r["rss"] < 50 else "MISSED"
    print(f"  driver RSS growth:  {r['rss']:6.1f} MB (goal < 50 MB: {goal}); VmHWM "
          f"{r['kernel'] or 0:.1f} MB")
    print(f"    anon (the driver's own memory) {r['anon']:.1f} MB, shared (mapped object-store "
          f"pages) {r['shared']:.1f} MB")
    print(f"    {first}: {r['first'][0]:.1f} MB (anon {r['first'][1]:.1f}, shared "
          f"{r['first'][2]:.1f})")
    verdict = "PASS" if r["ahead"] <= DEFAULT_BOUND else "FAIL"
    print(f"  rows read but not yet received, at most: {r['ahead']} (bound: max_buffered's "
          f"default 4 x chunk_size {CHUNK_SIZE} x batch <= {_MAX_BATCH} = {DEFAULT_BOUND}) "
          f"-> {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--head-seconds", type=float, default=3.0)
    parser.add_argument("--case", choices=["slow-head", "late-actor"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args.calls, args.head_seconds)),
              flush=True)
        return
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
    double.close()
    ray.shutdown()

    print("\neach case below in a fresh driver process; RSS growth: peak above the RSS just "
          "before, sampled every 10 ms")
    show(f"slow head: {args.calls} rows of ~1 KB through ordered .imap, row 0 sleeps "
         f"{args.head_seconds:g} s, actors warmed up",
         in_child("slow-head", args.calls, args.head_seconds),
         f"until row 0's result (while it ran, {args.head_seconds:g} s)")
    show(f"late actor: the same rows, no slow row, one of the 2 actors takes "
         f"{LateSecond.delay:g} s to start (inside the measurement)",
         in_child("late-actor", args.calls, args.head_seconds), "until the first result")


if __name__ == "__main__":
    main()
