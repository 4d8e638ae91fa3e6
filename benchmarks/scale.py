"""Per-row and per-call cost against the peers, measured in one run (issue 19's table).

    python benchmarks/scale.py             # make bench runs it
    python benchmarks/scale.py --quick     # fewer rows and rounds
    python benchmarks/scale.py --only tiny|cold|warm
    python benchmarks/scale.py --only warm --actors 8,32

1. tiny: 200,000 calls of ``2*x`` streamed through ``.imap`` against
   multiprocessing.Pool(2).imap (chunksize 1000) and joblib.Parallel(n_jobs=2) (its automatic
   batching), wall time and the driver's CPU per row. Goals: <= 4 x Pool, <= 0.5 x joblib.
2. cold: 40 calls of ~50 ms pure-Python work where the run makes its actors (a new
   ``chunked`` function each round; ActorPool over 2 actors made in the round), wall time
   and driver CPU; also with ``memory_budget=None`` (no memory admission: no first call
   alone to learn). Goal (issue 29): <= 1.05 x ActorPool in wall time, driver CPU <= 1.15 x.
3. warm: calls of one row each on started actors, 8 and then 32 of them (``--actors``), each
   size in a Ray of its own (2 CPUs, both peers' actors with ``num_cpus=0``: the calls sleep,
   so CPUs do not limit them); the sleep is 50 ms at 8 actors, 200 ms at 32, so that replies
   come at the same rate. The driver's CPU per call against ActorPool's (and, at 8 actors,
   multiprocessing.Pool(8)'s), with each round's ratio. Goal: <= 1.15 x ActorPool.

Rounds alternate between the peers; the median of the rounds is shown.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import ray
from ray.util import ActorPool

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import workloads  # noqa: E402

import thread_chunks  # noqa: E402

Timing = tuple[float, float]  # wall seconds, driver CPU seconds


def timed(fn: Callable[[], object]) -> Timing:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall0, time.process_time() - cpu0


def rounds(peers: dict[str, Callable[[], Timing]], repeats: int) -> dict[str, Timing]:
    """Each peer ``repeats`` times, alternating; the median wall time and CPU of each."""
    seen: dict[str, list[Timing]] = {name: [] for name in peers}
    for _ in range(repeats):
        for name, run in peers.items():
            seen[name].append(run())
    return {name: (statistics.median(t[0] for t in runs), statistics.median(t[1] for t in runs))
            for name, runs in seen.items()}


def table(title: str, rows: dict[str, Timing], ours: str, per: int) -> None:
    wall, cpu = rows[ours]
    print(f"\n## {title}")
    print(f"{'peer':36} {'wall (s)':>9} {'CPU/call':>10} {'ours/peer wall':>15} {'CPU':>6}")
    for peer, (w, c) in rows.items():
        print(f"{peer:36} {w:9.3f} {c / per * 1e6:8.0f}us {wall / w:15.2f} {cpu / c:6.2f}")


def tiny(count: int, repeats: int) -> None:
    def rows() -> Iterator[list[int]]:
        return ([i] for i in range(count))

    f = thread_chunks.chunked(chunk_size=2, progress_bar=False)(workloads.double)
    f.map([[i] for i in range(1000)])  # actors started
    pool = multiprocessing.get_context("spawn").Pool(2)
    pool.starmap(workloads.double, [[1]] * 4)
    parallel = joblib.Parallel(n_jobs=2)
    parallel(joblib.delayed(workloads.double)(i) for i in range(4))

    def ours() -> Timing:
        return timed(lambda: sum(f.imap(rows())))

    def mp() -> Timing:
        return timed(lambda: sum(pool.imap(workloads.double, range(count), chunksize=1000)))

    def jl() -> Timing:
        return timed(lambda: sum(parallel(joblib.delayed(workloads.double)(i)
                                          for i in range(count))))

    found = rounds({"thread-chunks .imap": ours, "multiprocessing.Pool(2).imap": mp,
                    "joblib.Parallel(n_jobs=2)": jl}, repeats)
    pool.close()
    pool.join()
    f.close()
    table(f"tiny: {count:,} calls of 2*x, streamed", found, "thread-chunks .imap", count)
    wall = found["thread-chunks .imap"][0]
    print(f"goal: <= 4 x multiprocessing.Pool -> "
          f"{wall / found['multiprocessing.Pool(2).imap'][0]:.2f} x; <= 0.5 x joblib -> "
          f"{wall / found['joblib.Parallel(n_jobs=2)'][0]:.2f} x")


def cold(repeats: int) -> None:
    n = workloads.calibrate(0.05)
    params = [[n] for _ in range(40)]

    def ours(**options: Any) -> Callable[[], Timing]:
        def run() -> Timing:
            f = thread_chunks.chunked(chunk_size=2, progress_bar=False, **options)(
                workloads.burn)
            took = timed(lambda: f.map(params))
            f.close()
            return took
        return run

    def actor_pool() -> Timing:
        def run() -> None:
            actors = [ray.remote(workloads.Worker).remote() for _ in range(2)]
            jobs = [(workloads.burn, tuple(p)) for p in params]
            list(ActorPool(actors).map(lambda a, v: a.run.remote(v), jobs))
            for actor in actors:
                ray.kill(actor)
        return timed(run)

    found = rounds({"thread-chunks (actors made by the run)": ours(),
                    "thread-chunks, memory_budget=None": ours(memory_budget=None),
                    "ray.util.ActorPool (2 new actors)": actor_pool}, repeats)
    table("cold: 40 calls of ~50 ms pure-Python work", found,
          "thread-chunks (actors made by the run)", 40)
    ours_t, peer = found["thread-chunks (actors made by the run)"], \
        found["ray.util.ActorPool (2 new actors)"]
    print(f"goal: wall <= 1.05 x ActorPool -> {ours_t[0] / peer[0]:.3f} x; "
          f"driver CPU <= 1.15 x -> {ours_t[1] / peer[1]:.2f} x (with nothing known of the "
          "function's memory, its first call on a node runs alone, to learn)")


WARM = """
import json, multiprocessing, sys, time
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
import ray
from ray.util import ActorPool
import thread_chunks, workloads
actors, count, repeats, nap = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), \\
    float(sys.argv[6])
with_mp = actors <= 8
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
f = thread_chunks.chunked(chunk_size=actors, batch_size=1, progress_bar=False,
                          actor_options={"num_cpus": 0})(workloads.nap)
f.map([[nap]] * (2 * actors))
remote = ray.remote(num_cpus=0)(workloads.Worker)
pool = ActorPool([remote.remote() for _ in range(actors)])
list(pool.map(lambda a, v: a.run.remote(v), [(workloads.nap, (nap,))] * (2 * actors)))
if with_mp:
    mp = multiprocessing.get_context("spawn").Pool(actors)
    mp.map(workloads.nap, [nap] * (2 * actors))
def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu
peers = {"thread-chunks": lambda: f.map([[nap]] * count),
         "ray.util.ActorPool": lambda: list(pool.map(lambda a, v: a.run.remote(v),
                                                     [(workloads.nap, (nap,))] * count))}
if with_mp:
    peers[f"multiprocessing.Pool({actors})"] = lambda: mp.map(workloads.nap, [nap] * count,
                                                              chunksize=1)
runs = {name: [] for name in peers}
for i in range(repeats):  # alternating, and which goes first alternates too
    for name in (list(peers) if i % 2 == 0 else list(peers)[::-1]):
        runs[name].append(timed(peers[name]))
print("RESULT " + json.dumps(runs))
"""


def warm(actors: int, count: int, repeats: int) -> float:
    """The warm line on ``actors`` started actors; returns the ratio of driver CPU per call to
    ActorPool's. Both peers' actors ask for ``num_cpus=0`` (Ray started with 2 CPUs, the
    machine's): the calls sleep, so CPUs are not what limits them, and 32 actors fit on 2
    CPUs. The sleep grows with the pool (50 ms at 8 actors, 200 ms at 32), so that calls come
    back at the same rate (160 a second) whatever the pool's size: the driver's work per
    second is the same, only the number of calls in flight grows."""
    nap = 0.05 * actors / 8
    paths = os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", WARM, str(HERE), str(HERE.parent), str(actors),
                           str(count), str(repeats), str(nap)], capture_output=True, text=True,
                          timeout=3600, env={**os.environ, "PYTHONPATH": paths})  # for workers
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"the warm benchmark failed:\n{proc.stderr[-3000:]}")
    runs: dict[str, list[list[float]]] = json.loads(line[7:])
    found = {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
             for name, ts in runs.items()}
    table(f"warm: {count:,} calls of a {nap * 1000:.0f} ms sleep on {actors} started actors "
          "(num_cpus=0)", found, "thread-chunks", count)
    ratio = found["thread-chunks"][1] / found["ray.util.ActorPool"][1]
    per_round = ", ".join(f"{a[1] / b[1]:.2f}" for a, b in zip(
        runs["thread-chunks"], runs["ray.util.ActorPool"], strict=True))
    print(f"goal: driver CPU per call <= 1.15 x ActorPool -> {ratio:.2f} x "
          f"(each round: {per_round})")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and rounds")
    parser.add_argument("--only", choices=["tiny", "cold", "warm"], action="append")
    parser.add_argument("--actors", default="8,32",
                        help="the warm line's pool sizes, comma-separated (default 8,32)")
    args = parser.parse_args()
    only: set[Any] = set(args.only or ["tiny", "cold", "warm"])
    repeats = 1 if args.quick else 3
    print(f"# scale benchmarks: 2 workers unless said, {repeats} round(s), medians shown")
    if only & {"tiny", "cold"}:
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 log_to_driver=False)  # a Ray of its own, even if one runs on the machine
        if "tiny" in only:
            tiny(20_000 if args.quick else 200_000, repeats)
        if "cold" in only:
            cold(2 if args.quick else 5)
        ray.shutdown()
    if "warm" in only:
        for actors in (int(a) for a in args.actors.split(",")):
            warm(actors, 400 if args.quick else 3000, 3 if args.quick else 5)


if __name__ == "__main__":
    main()
