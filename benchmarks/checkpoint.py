"""Row-keyed checkpoints, measured in one run (ratios and rates, not absolute claims).

    python benchmarks/checkpoint.py            # make bench runs it
    python benchmarks/checkpoint.py --quick
    python benchmarks/checkpoint.py --only scale [--million]
    python benchmarks/checkpoint.py --only scale --filesystem network   # no WAL shared memory

1. checkpoint / no checkpoint: the same 8000 tiny calls with and without ``path=`` (median
   of 3; goal <= 1.5); then at scale (issue 19), 200,000 calls of ``2*x``, alternating rounds
   (median of 3): ``.map`` with a new checkpoint / without (goal <= 1.3), and the same list
   again with every row reused / without (goal <= 0.3); with ``--million`` (make bench passes
   it) 10^6 rows, checkpointed ``.map`` / streamed ``.imap`` from a generator (goal <= 1.3);
2. opening a checkpoint of 100,000 finished rows and matching a 100,000-row list of small
   arguments built anew (keys, open, match: what a rerun pays before its first call; goal
   well under 2 s), and the same with 10 new rows appended; then ``thread-chunks inspect``
   on a checkpoint of 1,000,000 rows (a fresh process: its wall time and peak RSS);
3. digests of 1,000 rows each holding a distinct 1 MB float64 array: our digest (SHA-256 of
   the buffer) against pickle.dumps alone and pickle + SHA-256 (joblib's way), in MB/s.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import ray

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import workloads  # noqa: E402

import thread_chunks  # noqa: E402
from thread_chunks._actor import pack  # noqa: E402
from thread_chunks._checkpoint import Store  # noqa: E402
from thread_chunks._digest import Binder, row_keys  # noqa: E402
from thread_chunks._rows import Calls  # noqa: E402


def simulate(x: int, y: float) -> float:
    return x * y


def overhead(count: int, repeats: int) -> None:
    rows = [[i] for i in range(count)]
    f = thread_chunks.chunked(chunk_size=2, progress_bar=False)(workloads.double)
    f.map(rows[:200])  # warm the actors
    plain, saved = [], []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(repeats):
            start = time.perf_counter()
            f.map(rows)
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            f.map(rows, path=Path(folder, f"run{r}.ckpt"))
            saved.append(time.perf_counter() - start)
    a, b = statistics.median(plain), statistics.median(saved)
    print(f"1. {count} tiny calls: no checkpoint {a:.3f} s, checkpoint {b:.3f} s, "
          f"ratio {b / a:.2f} (goal <= 1.5)")


def _settle() -> float:
    """Wait for the checkpoints' closing threads (they finish folding a run's results into
    the file in the background); the seconds waited."""
    start = time.perf_counter()
    for thread in threading.enumerate():
        if thread.name.startswith("thread-chunks checkpoint"):
            thread.join()
    return time.perf_counter() - start


def scale(count: int, repeats: int, million: bool) -> None:
    rows = [[i] for i in range(count)]
    f = thread_chunks.chunked(chunk_size=2, progress_bar=False)(workloads.double)
    f.map(rows[:2000])  # warm the actors
    plain, saved, reused, settle = [], [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(repeats):  # alternating rounds: the machine's load hits all alike
            path = Path(folder, f"scale{r}.ckpt")
            start = time.perf_counter()
            f.map(rows)
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            f.map(rows, path=path)
            saved.append(time.perf_counter() - start)
            settle.append(_settle())
            start = time.perf_counter()
            again = f.map(rows, path=path)
            reused.append(time.perf_counter() - start)
            assert f.stats.calls == 0 and again[-1] == 2 * (count - 1), f.stats
            _settle()
    a, b, c = (statistics.median(x) for x in (plain, saved, reused))
    print(f"1. {count} calls of 2*x: no checkpoint {a:.2f} s, new checkpoint {b:.2f} s "
          f"(then {statistics.median(settle):.2f} s closing in the background), every row "
          f"reused {c:.2f} s")
    print(f"   {count} rows: checkpointed / plain {b / a:.2f} (goal <= 1.3); every row "
          f"reused / plain {c / a:.2f} (goal <= 0.3)")
    if not million:
        return
    n = 1_000_000

    def stream() -> Iterator[list[int]]:
        for i in range(n):
            yield [i]

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        total = sum(f.imap(stream()))
        streamed = time.perf_counter() - start
        assert total == n * (n - 1), total
        start = time.perf_counter()
        f.map([[i] for i in range(n)], path=Path(folder, "million.ckpt"))
        checkpointed = time.perf_counter() - start
        _settle()
    print(f"   10^6 rows: streamed .imap {streamed:.1f} s, checkpointed .map "
          f"{checkpointed:.1f} s; checkpointed / streamed {checkpointed / streamed:.2f} "
          "(goal <= 1.3)")


def _calls(n: int, extra: int = 0) -> tuple[list[list[object]], Calls]:
    rows: list[list[object]] = [[i, float(i) / 7] for i in range(n + extra)]
    return rows, Calls.of(rows)


def open_and_match(n: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "big.ckpt")
        rows, calls = _calls(n)
        _fill(path, rows, calls)
        for extra, label in ((0, "the same list"), (10, "10 rows appended")):
            rows, calls = _calls(n, extra)  # built anew, as a rerun would
            start, cpu = time.perf_counter(), time.process_time()
            store = Store.open(path, simulate, "simulate", calls, rows)
            took, used = time.perf_counter() - start, time.process_time() - cpu
            known = store.reused
            store.close()
            start = time.perf_counter()
            row_keys(Binder(simulate), calls)
            keyed = time.perf_counter() - start
            assert len(known) == n, len(known)
            print(f"2. open {n} stored rows + match {len(calls)} ({label}): {took:.3f} s "
                  f"wall, {used:.3f} s CPU (of which row keys {keyed:.3f} s); "
                  f"{len(known)} reused (goal well under 2 s)")


def _fill(path: str, rows: list[list[object]], calls: Calls) -> None:
    """A checkpoint of ``rows``, every one finished, recorded as a run records them."""
    store = Store.open(path, simulate, "simulate", calls, rows)
    now = time.time()
    for start in range(0, len(calls), 1000):  # in batches, as a run does
        store.record([(i, True, pack(simulate(i, float(i) / 7)), now + i * 1e-6,
                       now + i * 1e-6, "", None)
                      for i in range(start, min(len(calls), start + 1000))], "actor-0")
    store.close()
    _settle()  # the background close folds the staged results and the WAL


def inspect_large(n: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "huge.ckpt")
        _fill(path, *_calls(n))
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over an exec from the parent
        code = ("import sys; from thread_chunks.__main__ import main; "
                "main(['inspect', '--json', sys.argv[1]]); "
                "print([int(l.split()[1]) / 1024 for l in open('/proc/self/status') "
                "if l.startswith('VmHWM')][0])")
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code, path], capture_output=True,
                             text=True, check=True, cwd=HERE.parent).stdout
        took = time.perf_counter() - start
        peak = float(out.strip().splitlines()[-1])
        assert f'"total": {n}' in out, out
        print(f"   inspect of {n} rows: {took:.2f} s wall (process start included), peak RSS "
              f"{peak:.0f} MB (goals ~1 s, <= 150 MB)")


def digest_rate(rows: int, megabytes: int) -> None:
    arrays = [np.full(megabytes * 2**17, float(i)) for i in range(rows)]  # 8 B per float
    size = sum(a.nbytes for a in arrays) / 2**20
    calls = [((a, i), {}) for i, a in enumerate(arrays)]

    def rate(fn: object) -> float:
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        return size / (time.perf_counter() - start)

    # best of 2 each: the first pass of a pickle also pays page faults for its output
    ours = max(rate(lambda: row_keys(Binder(lambda values, i: None), calls)) for _ in "ab")
    dumps = max(rate(lambda: [pickle.dumps(a, 5) for a in arrays]) for _ in "ab")
    hashed = max(rate(lambda: [hashlib.sha256(pickle.dumps(a, 5)).digest() for a in arrays])
                 for _ in "ab")
    print(f"3. {rows} rows x {megabytes} MB arrays: digest {ours:.0f} MB/s, pickle.dumps "
          f"{dumps:.0f} MB/s, pickle+sha256 {hashed:.0f} MB/s; digest / (pickle+sha256) "
          f"{ours / hashed:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--million", action="store_true",
                        help="also 10^6 rows checkpointed against streamed (minutes)")
    parser.add_argument("--only", choices=["scale"],
                        help="only the checkpoint cost at scale")
    parser.add_argument("--filesystem", choices=["auto", "local", "network"], default="auto",
                        help="config.checkpoint_filesystem: 'network' measures the mode of "
                        "network filesystems (WAL with its index in memory) on this disk")
    args = parser.parse_args()
    thread_chunks.config.checkpoint_filesystem = args.filesystem
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        if args.only is None:
            overhead(1000 if args.quick else 8000, 1 if args.quick else 3)
        scale(20_000 if args.quick else 200_000, 1 if args.quick else 3, args.million)
    finally:
        ray.shutdown()
    if args.only is not None:
        return
    open_and_match(10_000 if args.quick else 100_000)
    inspect_large(100_000 if args.quick else 1_000_000)
    digest_rate(100 if args.quick else 1000, 1)


if __name__ == "__main__":
    main()
