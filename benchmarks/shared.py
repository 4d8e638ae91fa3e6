"""The same big argument in every row: thread-chunks against putting it once by hand.

    python benchmarks/shared.py            # make bench runs it: 100 MB array, 60 rows
    python benchmarks/shared.py --quick    # 16 MB, 12 rows: a sanity check in under a minute

A 100 MB float64 array ``big`` and 60 rows ``[big, i]`` of a function that reads every page of
the array and sleeps 0.1 s, on 2 workers each:

- put-once by hand: ``ref = ray.put(big)``, then a ``ray.util.ActorPool`` of 2 actors passing
  ``ref`` (the ideal with Ray, the reference: ratio 1.00);
- thread-chunks: ``chunked(chunk_size=2)(touch).map([[big, i] for i in range(60)])``, no change
  to the user's code;
- ``joblib.Parallel(n_jobs=2)`` (loky, arrays over 1 MB memory-mapped automatically);
- ``multiprocessing.Pool(2).starmap`` (spawn).

Every case runs in a fresh driver process of its own, with the same steps: build ``big``
(its pages are in the baseline), start the workers (Ray cases: ``ray.init(num_cpus=2,
address="local")``) and warm them up on a small array, then measure one run: wall time and
the driver's peak RSS above the RSS just before it (sampled every 10 ms; the kernel's VmHWM
as a cross-check). Start-up is not measured. A fresh process per case, because a driver
keeps the object store's pages mapped after the object is freed: in one process, the Ray
case measured second would reuse the first one's 100 MB for free.

The thread-chunks case also checks that the object store is left as it was found: its used
bytes and the driver's owned references, before its measured run and after 10 runs in a row.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import joblib  # type: ignore[import-untyped]
import numpy as np
import ray
from ray.util import ActorPool

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import workloads  # noqa: E402
from rss import MB, PeakRSS  # noqa: E402

from thread_chunks import chunked  # noqa: E402

CASES = {
    "put-once": "put once by hand + ActorPool",
    "thread-chunks": "thread-chunks .map",
    "joblib": "joblib.Parallel(n_jobs=2)",
    "multiprocessing": "multiprocessing.Pool(2).starmap",
}
RUNS_IN_A_ROW = 10
GOAL_WALL, GOAL_RSS = 1.15, 1.3


def expected(big: np.ndarray[Any, Any], rows: int) -> list[float]:
    pages = float(big[::512].sum())
    return [pages + i for i in range(rows)]


# -- the object store ------------------------------------------------------------------------

def store_used() -> float:
    """MB of the object store in use (as the raylet reports it: up to about a second late)."""
    total = float(ray.cluster_resources().get("object_store_memory", 0.0))
    free = float(ray.available_resources().get("object_store_memory", total))
    return (total - free) / MB


def owned_refs() -> int:
    """Object references the driver's core worker counts."""
    core = ray._private.worker.global_worker.core_worker  # type: ignore[attr-defined]
    return len(core.get_all_reference_counts())


def settled(target: tuple[int, float] | None = None, limit: float = 15.0) -> tuple[int, float]:
    """(owned references, store MB) once two readings a second apart agree, or ``target``
    is reached, or ``limit`` seconds passed."""
    deadline = time.monotonic() + limit
    last = None
    while True:
        now = (owned_refs(), round(store_used(), 1))
        if now == target or now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(1.0)


class StorePeak:
    """The most object-store MB in use while a run goes on, read every 0.2 s."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, store_used())
            if self._stop.wait(0.2):
                return

    def __enter__(self) -> StorePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, store_used())


# -- one case, in a process of its own -------------------------------------------------------

def measure(work: Callable[[], list[float]], want: list[float], ray_case: bool
            ) -> dict[str, Any]:
    with PeakRSS() as peak, StorePeak() if ray_case else nullcontext() as store:
        start = time.perf_counter()
        out = work()
        wall = time.perf_counter() - start
    assert [float(x) for x in out] == want, "wrong results"
    return {"wall": wall, "rss": peak.rss, "anon": peak.anon, "shared": peak.shared,
            "shm": peak.shm, "kernel": peak.kernel, "store": None if store is None else store.peak}


def run_case(case: str, mb: int, rows: int) -> dict[str, Any]:
    big = np.ones(mb * 2**20 // 8)  # written, so its pages are resident before the baseline
    small = np.ones(16)
    want = expected(big, rows)
    warm = [[small, i] for i in range(2)]
    if case in ("put-once", "thread-chunks"):
        ray.init(num_cpus=2, address="local", include_dashboard=False, log_to_driver=False)

    if case == "put-once":
        pool = ActorPool([ray.remote(workloads.Caller).remote() for _ in range(2)])
        list(pool.map(lambda a, r: a.call.remote(workloads.touch, *r), warm))

        def by_hand() -> list[float]:
            ref = ray.put(big)
            return list(pool.map(lambda a, i: a.call.remote(workloads.touch, ref, i),
                                 list(range(rows))))

        return measure(by_hand, want, True)

    if case == "thread-chunks":
        f = chunked(chunk_size=2, progress_bar=False)(workloads.touch)
        f.map(warm)  # both actors started
        before = settled()
        result = measure(lambda: f.map([[big, i] for i in range(rows)]), want, True)
        walls = [result["wall"]]
        for _ in range(RUNS_IN_A_ROW - 1):
            start = time.perf_counter()
            assert f.map([[big, i] for i in range(rows)]) == want
            walls.append(time.perf_counter() - start)
        after = settled(target=before)
        f.close()
        result.update(before=before, after=after, walls=walls)
        return result

    if case == "joblib":
        parallel = joblib.Parallel(n_jobs=2)
        parallel(joblib.delayed(workloads.touch)(*r) for r in warm)
        return measure(lambda: parallel(joblib.delayed(workloads.touch)(big, i)
                                        for i in range(rows)), want, False)

    if case == "multiprocessing":
        # spawn, as in run.py (the other cases' drivers run Ray's threads: fork is unsafe there)
        with multiprocessing.get_context("spawn").Pool(2) as mp_pool:
            mp_pool.starmap(workloads.touch, warm)
            return measure(lambda: mp_pool.starmap(workloads.touch,
                                                   [(big, i) for i in range(rows)]), want, False)
    raise ValueError(case)


def in_child(case: str, mb: int, rows: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--case", case, "--mb", str(mb),
                           "--rows", str(rows)], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "RAY_ADDRESS": "local"})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            data: dict[str, Any] = json.loads(line[7:])
            return data
    raise RuntimeError(f"case {case} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


# -- the report ------------------------------------------------------------------------------

def report(results: dict[str, dict[str, Any]], mb: int, rows: int) -> None:
    ref = results["put-once"]
    print(f"\n## same {mb} MB array in every row: {rows} rows of read-every-page + sleep 0.1 s, "
          f"2 workers, {os.cpu_count()} CPUs")
    print("each case in a fresh driver process, workers started and warmed up first "
          "(start-up not measured), one measured run")
    print("driver RSS: peak above the RSS just before the run (sampled every 10 ms); "
          "anon / shared: the process's own memory / mapped shared memory and files;")
    print("VmHWM: the kernel's peak RSS (exact); machine shm: growth of the machine's shared "
          "memory (tmpfs: /dev/shm, Ray's store); store: Ray's object store in use")
    print(f"\n{'case':34} {'wall s':>7} {'x ref':>6} {'RSS MB':>7} {'x ref':>6} "
          f"{'anon':>6} {'shared':>7} {'VmHWM':>6} {'machine shm':>12} {'store MB':>9}")
    for case, label in CASES.items():
        r = results[case]
        kernel = "-" if r["kernel"] is None else f"{r['kernel']:.0f}"
        store = "-" if r["store"] is None else f"{r['store']:.0f}"
        print(f"{label:34} {r['wall']:7.2f} {r['wall'] / ref['wall']:6.2f} {r['rss']:7.0f} "
              f"{r['rss'] / max(ref['rss'], 1.0):6.2f} {r['anon']:6.0f} {r['shared']:7.0f} "
              f"{kernel:>6} {r['shm']:12.0f} {store:>9}")
    ours = results["thread-chunks"]
    wall, rss = ours["wall"] / ref["wall"], ours["rss"] / max(ref["rss"], 1.0)
    print(f"\ngoal: thread-chunks wall <= {GOAL_WALL} x put-once -> {wall:.2f} x "
          f"({'met' if wall <= GOAL_WALL else 'MISSED'})")
    print(f"goal: thread-chunks driver peak RSS <= {GOAL_RSS} x put-once -> {rss:.2f} x "
          f"({'met' if rss <= GOAL_RSS else 'MISSED'})")
    walls = sorted(ours["walls"])
    print(f"thread-chunks over {len(walls)} runs in a row: wall {walls[0]:.2f} - "
          f"{walls[-1]:.2f} s, median {walls[len(walls) // 2]:.2f} s")
    (refs0, used0), (refs1, used1) = ours["before"], ours["after"]
    ok = refs1 <= refs0 and used1 <= used0 + 1.0
    print(f"object store before the thread-chunks runs: {used0:.1f} MB, {refs0} owned refs; "
          f"after {RUNS_IN_A_ROW} runs: {used1:.1f} MB, {refs1} owned refs -> "
          f"{'PASS' if ok else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 MB array, 12 rows")
    parser.add_argument("--mb", type=int, help="array size in MB (default 100)")
    parser.add_argument("--rows", type=int, help="rows (default 60)")
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    mb = args.mb or (16 if args.quick else 100)
    rows = args.rows or (12 if args.quick else 60)
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, mb, rows)), flush=True)
        return
    results = {}
    for case in CASES:
        print(f"measuring {CASES[case]} ...", file=sys.stderr, flush=True)
        results[case] = in_child(case, mb, rows)
    report(results, mb, rows)


if __name__ == "__main__":
    main()
