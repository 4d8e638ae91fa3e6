"""Large results: the driver's peak RSS while rows of 8 MB results come back (issue 16).

    python benchmarks/results.py [--rows 80] [--mb 8] [--touch]

``rows`` calls of ``field(i, mb)`` (``mb`` MiB of float64, every element ``i``; the functions
are tests/results_workloads.py's, the same the tests run), 2 workers, the consumer checking
each result and dropping it. Cases, thread-chunks (``chunked(chunk_size=2)``, ``.imap``):

- streamed: ordered ``.imap``, no checkpoint;
- slow head: the same, row 0 sleeps 4 s while the other rows finish (held behind it);
- checkpointed: streamed with ``path=``; reused: the same sweep again in a new driver, every
  row found in that checkpoint (no call runs);
- inspect: ``thread-chunks inspect --json`` on that checkpoint, in a process of its own (its
  whole peak: the import alone is shown beside it);
- carried 30 / 60: rows ``[block, i]`` each bringing its own 20 MB array (built before the
  measurement), a small result, with ``path=``.

Peers, for the cases they have: ``joblib.Parallel(n_jobs=2, return_as="generator")``,
``multiprocessing.Pool(2).imap`` (spawn) and Ray by hand (``ray.util.ActorPool`` of 2 actors,
``.map``: the floor under thread-chunks), the same function, the same consumer. The ideal is
one result's size (``mb``): a driver that holds one result at a time.

Every case runs in a fresh driver process (a process keeps the heap and object-store pages it
once touched, which would hide the next case's growth), workers started and warmed up on 2
rows first. Growth: the driver's peak RSS above the RSS just before the measured work, the
kernel's VmHWM (reset through /proc/self/clear_refs; sampled psutil RSS where that is not
allowed), split, as sampled every 10 ms, into anon (the process's own memory: heap, copies)
and shared (pages mapped from Ray's object store and files). Machine shm: growth of the
machine's shared memory (Ray's object store is there), whoever maps it.

By default the consumer reads one element of each result (``value[0] == i``): with Ray a
result arrives zero-copy from the object store, so only that one page enters the driver's
RSS. ``--touch`` reads one float of every 4 KiB page instead (a consumer that uses its
results): every page of every result is then mapped into the driver, whatever the engine.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import joblib  # type: ignore[import-untyped]
import numpy as np
import ray
from ray.util import ActorPool

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import workloads  # noqa: E402
from rss import MB, PeakRSS  # noqa: E402

from tests import results_workloads as rw  # noqa: E402
from thread_chunks import chunked  # noqa: E402

SCENARIOS = {
    "streamed": "streamed .imap",
    "slow-head": f"slow head ({rw.HEAD_SECONDS:g} s), ordered",
    "checkpointed": "streamed, path= (writes it)",
    "reused": "reused from the checkpoint",
    "inspect": "inspect --json (CLI peak)",
    "carried-30": f"30 rows x {rw.INPUT_MB} MB inputs, path=",
    "carried-60": f"60 rows x {rw.INPUT_MB} MB inputs, path=",
}
ENGINES = {"tc": "thread-chunks", "joblib": "joblib", "mp": "multiprocessing",
           "ray": "ray.util.ActorPool"}
PEERS = ("streamed", "slow-head")  # the cases the peers have
GOALS = {"streamed": 256.0, "slow-head": 320.0, "reused": 256.0, "inspect": 200.0}
"""The bounds of tests/test_results_memory.py (MB; inspect: the CLI's whole peak). The
checkpointed case's goal is on the driver's own (anon) growth, :data:`ANON_GOAL`: it reads
every page of every result, and how many distinct object-store pages that maps follows Ray's
reuse of freed space. The carried cases' goal: anon growth under half the inputs."""
ANON_GOAL = {"checkpointed": 64.0}


def consume(results: Iterable[Any], wanted: range, touch: bool, mb: int) -> int:
    """Check each result (row ``i`` is ``field(i, mb)``) and drop it; how many came."""
    pages = mb * 2**20 // 8 // 512
    count = 0
    for i, value in zip(wanted, results, strict=True):
        if touch:
            assert float(value[::512].sum()) == float(i) * pages, i
        else:
            assert value[0] == float(i), i
        count += 1
        del value
    return count


def measure(work: Callable[[], object]) -> dict[str, Any]:
    start = time.perf_counter()
    with PeakRSS() as peak:
        work()
    return {"rss": peak.rss if peak.kernel is None else peak.kernel, "anon": peak.anon,
            "shared": peak.shared, "shm": peak.shm, "wall": time.perf_counter() - start}


def start_ray() -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


# -- one case, in a process of its own -------------------------------------------------------

def thread_chunks_case(scenario: str, rows: int, mb: int, touch: bool, folder: str
                       ) -> dict[str, Any]:
    start_ray()
    ckpt = os.path.join(folder, "ckpt")
    if scenario.startswith("carried-"):
        count = int(scenario.removeprefix("carried-"))
        g = chunked(chunk_size=2, progress_bar=False)(rw.first_plus)
        g.map([[np.zeros(4), i] for i in range(2)])
        inputs = [[rw.input_block(i), i] for i in range(count)]
        carried_ckpt = os.path.join(folder, scenario)

        def carried() -> None:
            for i, value in enumerate(g.imap(inputs, path=carried_ckpt)):
                assert value == 2.0 * i

        try:
            result = measure(carried)
        except Exception as exc:  # 60 rows today: sqlite3.DataError
            result = {"error": f"{type(exc).__name__}: {exc}"}
        g.close()
        return result
    f = chunked(chunk_size=2, progress_bar=False)(
        rw.slow_head_field if scenario == "slow-head" else rw.field)
    consume(f.imap([[i, mb] for i in (1, 2)]), range(1, 3), touch, mb)
    path = ckpt if scenario in ("checkpointed", "reused") else None
    result = measure(lambda: consume(f.imap([[i, mb] for i in range(rows)], path=path),
                                     range(rows), touch, mb))
    if scenario == "reused":
        assert f.stats.calls == 0, f"{f.stats.calls} calls ran again"
    f.close()
    return result


def joblib_case(scenario: str, rows: int, mb: int, touch: bool) -> dict[str, Any]:
    func = rw.slow_head_field if scenario == "slow-head" else rw.field
    parallel = joblib.Parallel(n_jobs=2, return_as="generator")
    consume(parallel(joblib.delayed(func)(i, mb) for i in (1, 2)), range(1, 3), touch, mb)
    return measure(lambda: consume(parallel(joblib.delayed(func)(i, mb) for i in range(rows)),
                                   range(rows), touch, mb))


def multiprocessing_case(scenario: str, rows: int, mb: int, touch: bool) -> dict[str, Any]:
    func = functools.partial(rw.slow_head_field if scenario == "slow-head" else rw.field,
                             mb=mb)
    # spawn, as in shared.py (a driver that ran Ray's threads must not fork)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        consume(pool.imap(func, (1, 2)), range(1, 3), touch, mb)
        return measure(lambda: consume(pool.imap(func, range(rows)), range(rows), touch, mb))


def actor_pool_case(scenario: str, rows: int, mb: int, touch: bool) -> dict[str, Any]:
    """Ray by hand, the floor under thread-chunks: two actors, ``ActorPool.map`` (ordered)."""
    start_ray()
    func = rw.slow_head_field if scenario == "slow-head" else rw.field
    pool = ActorPool([ray.remote(workloads.Caller).remote() for _ in range(2)])

    def call(actor: Any, i: int) -> Any:
        return actor.call.remote(func, i, mb)

    consume(pool.map(call, [1, 2]), range(1, 3), touch, mb)
    return measure(lambda: consume(pool.map(call, list(range(rows))), range(rows), touch, mb))


def run_case(engine: str, scenario: str, rows: int, mb: int, touch: bool, folder: str
             ) -> dict[str, Any]:
    if engine == "tc":
        return thread_chunks_case(scenario, rows, mb, touch, folder)
    if engine == "joblib":
        return joblib_case(scenario, rows, mb, touch)
    if engine == "ray":
        return actor_pool_case(scenario, rows, mb, touch)
    return multiprocessing_case(scenario, rows, mb, touch)


def in_child(engine: str, scenario: str, args: argparse.Namespace, folder: str
             ) -> dict[str, Any]:
    command = [sys.executable, __file__, "--case", f"{engine}:{scenario}", "--rows",
               str(args.rows), "--mb", str(args.mb), "--folder", folder]
    proc = subprocess.run(command + (["--touch"] if args.touch else []), capture_output=True,
                          text=True, timeout=1800, env=child_env())
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            data: dict[str, Any] = json.loads(line[7:])
            return data
    raise RuntimeError(f"case {engine}:{scenario} failed:\n{proc.stdout[-2000:]}\n"
                       f"{proc.stderr[-4000:]}")


def child_env() -> dict[str, str]:
    """A fresh driver's environment: its own Ray, this checkout importable (the workers of
    every peer import tests.results_workloads)."""
    paths = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": os.pathsep.join(paths)}


def python_peak(code: str) -> dict[str, Any]:
    """Run ``code`` (which prints one ``RESULT`` line) in a minimal fresh Python."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, env=child_env(), cwd=str(ROOT))
    for line in proc.stdout.splitlines():
        if line.startswith(rw.RESULT):
            data: dict[str, Any] = json.loads(line.removeprefix(rw.RESULT))
            return data
    raise RuntimeError(f"failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def inspect_case(folder: str) -> dict[str, Any]:
    """The CLI's whole peak on the checkpoint, and the peak of only importing it."""
    cli = python_peak(f"from tests.results_workloads import main; main('inspect', {folder!r})")
    alone = python_peak("import json, thread_chunks.__main__\n"
                        "from tests.results_workloads import RESULT, own_peak_mb\n"
                        "print(RESULT + json.dumps({'peak_mb': own_peak_mb()}))")
    assert cli["summary"]["done"] == cli["summary"]["total"], cli
    return {"rss": cli["peak_mb"], "import": alone["peak_mb"]}


# -- the report ------------------------------------------------------------------------------

def cells(r: dict[str, Any] | None, ideal: float) -> str:
    """An engine's growth (MB) and its ratio to the ideal, or why there is none."""
    if r is None:
        return f"{'-':>7} {'-':>7}"
    if "error" in r:
        return f"{r['error'].split(':')[0]:>15}"
    return f"{r['rss']:7.0f} {r['rss'] / ideal:6.1f}x"


def verdict(scenario: str, r: dict[str, Any], folder: str) -> str:
    """The case's goal (tests/test_results_memory.py's bound) and whether it is met."""
    if "error" in r:
        return "no exception: MISSED"
    if scenario.startswith("carried-"):
        inputs = int(scenario.removeprefix("carried-")) * rw.INPUT_MB
        size = sum(p.stat().st_size for p in Path(folder).glob(scenario + "*")) / MB
        return (f"anon < {inputs // 2}: {'met' if r['anon'] < inputs / 2 else 'MISSED'}, "
                f"file {size:.0f} MB < {inputs // 10}: {'met' if size < inputs / 10 else 'MISSED'}")
    if scenario in ANON_GOAL:
        goal = ANON_GOAL[scenario]
        return f"anon <= {goal:.0f}: {'met' if r['anon'] <= goal else 'MISSED'}"
    goal = GOALS[scenario]
    return f"<= {goal:.0f}: {'met' if r['rss'] <= goal else 'MISSED'}"


def report(results: dict[tuple[str, str], dict[str, Any]], args: argparse.Namespace,
           folder: str) -> None:
    ideal = float(args.mb)
    consumer = "reads every page" if args.touch else "reads one element"
    print(f"\n## {args.rows} rows of {args.mb} MB results, 2 workers, {os.cpu_count()} CPUs; "
          f"the consumer {consumer} of each result, then drops it")
    print(f"driver peak RSS growth, MB (x ideal: / {args.mb} MB, one result); each case in a "
          "fresh driver; anon / shared: thread-chunks' own memory / pages mapped from Ray's "
          "object store (sampled); shm: the machine's shared memory (Ray's object store)\n")
    print(f"{'case':36} {'thread-chunks':>15} {'anon':>6} {'shared':>6} {'shm':>5} "
          f"{'joblib':>15} {'multiprocessing':>15} {'ActorPool':>15} {'tc/joblib':>9} "
          f"{'tc/mp':>6} {'tc/pool':>7}  goal")
    notes = []
    for scenario, label in SCENARIOS.items():
        ours = results[("tc", scenario)]
        joblib_r, mp_r, pool_r = (results.get((e, scenario)) for e in ("joblib", "mp", "ray"))
        if scenario == "inspect":
            split = f"{'-':>6} {'-':>6} {'-':>5}"
            notes.append(f"inspect: the CLI's whole peak; importing it alone peaks at "
                         f"{ours['import']:.0f} MB, so the summary costs "
                         f"{ours['rss'] - ours['import']:.0f} MB")
        elif "error" in ours:
            split = f"{'-':>6} {'-':>6} {'-':>5}"
            notes.append(f"{scenario}: {ours['error'][:100]}")
        else:
            split = f"{ours['anon']:6.0f} {ours['shared']:6.0f} {ours['shm']:5.0f}"
        ratios = " ".join(
            f"{ours['rss'] / max(t['rss'], 1.0):{w}.2f}" if t and "rss" in ours else f"{'-':>{w}}"
            for t, w in ((joblib_r, 9), (mp_r, 6), (pool_r, 7)))
        print(f"{label:36} {cells(ours, ideal)} {split} {cells(joblib_r, ideal)} "
              f"{cells(mp_r, ideal)} {cells(pool_r, ideal)} {ratios}  "
              f"{verdict(scenario, ours, folder)}")
    for note in notes:
        print(note)
    print("\npeers (anon / shared / machine shm, MB) and wall times:")
    for engine in ("joblib", "mp", "ray"):
        for scenario in PEERS:
            r = results[(engine, scenario)]
            print(f"  {ENGINES[engine]:18} {scenario:12} {r['anon']:5.0f} {r['shared']:5.0f} "
                  f"{r['shm']:5.0f}  {r['wall']:5.1f} s")
    for scenario in SCENARIOS:
        r = results[("tc", scenario)]
        if "wall" in r:
            print(f"  {'thread-chunks':18} {scenario:12} {'':17}  {r['wall']:5.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=rw.ROWS)
    parser.add_argument("--mb", type=int, default=rw.MB, help="MiB per result")
    parser.add_argument("--touch", action="store_true",
                        help="the consumer reads every page of each result, not one element")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        engine, scenario = args.case.split(":")
        print("RESULT " + json.dumps(run_case(engine, scenario, args.rows, args.mb, args.touch,
                                              args.folder)), flush=True)
        return
    results: dict[tuple[str, str], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        plan = [("tc", s) for s in SCENARIOS]
        plan += [(e, s) for e in ("joblib", "mp", "ray") for s in PEERS]
        for engine, scenario in plan:  # checkpointed before reused and inspect: they read it
            print(f"measuring {ENGINES[engine]}: {scenario} ...", file=sys.stderr, flush=True)
            if scenario == "inspect":
                results[(engine, scenario)] = inspect_case(folder)
            else:
                results[(engine, scenario)] = in_child(engine, scenario, args, folder)
        report(results, args, folder)


if __name__ == "__main__":
    main()
