"""A memory-heavy Monte Carlo sweep: what thread-chunks is for.

Each call draws tens of millions of random points (a few hundred MB of numpy arrays) to
estimate pi. The sweep runs as many calls at once as this machine's memory allows, shows a
progress bar, and records every result in ``demo.ckpt``: press Ctrl-C half-way and run it
again, and it resumes where it stopped. It ends with a short summary.

    python examples/demo.py [--calls 24] [--mb 384] [--rounds 4] [--path demo.ckpt]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time

import numpy as np
import psutil
import ray

from thread_chunks import Checkpoint, CheckpointError, chunked


def estimate_pi(seed: int, points: int, rounds: int = 4) -> float:
    """Monte Carlo estimate of pi from ``rounds`` draws of ``points`` random points."""
    rng = np.random.default_rng(seed)
    xy = np.empty((points, 2))  # 16 bytes per point: the memory this call needs
    inside = 0
    for _ in range(rounds):
        rng.random(out=xy)
        inside += int(np.count_nonzero(np.einsum("ij,ij->i", xy, xy) <= 1.0))
    return 4.0 * inside / (points * rounds)


class MemorySampler(threading.Thread):
    """Samples the resident memory of the driver and the given worker processes."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pids: set[int] = {os.getpid()}
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.1):
            total = 0
            for pid in list(self.pids):
                try:
                    total += psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    self.pids.discard(pid)
            self.peak = max(self.peak, total)

    def stop(self) -> None:
        self._done.set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=24)
    parser.add_argument("--mb", type=int, default=384, help="array size per call, in MB")
    parser.add_argument("--rounds", type=int, default=4, help="draws per call (time per call)")
    parser.add_argument("--path", default="demo.ckpt")
    args = parser.parse_args()

    points = args.mb * 2**20 // 16
    per_call = int(1.5 * args.mb * 2**20)  # the array, the einsum result and some headroom

    if os.path.exists(args.path):
        try:
            previous = Checkpoint.load(args.path)
        except CheckpointError as exc:
            print(f"cannot use {args.path}: {exc}", file=sys.stderr)
            return 2
        if previous.done == len(previous.parameters):
            os.remove(args.path)  # our own finished checkpoint: run the demo afresh
        else:
            print(f"resuming: {previous.done} of {len(previous.parameters)} calls are "
                  f"already in {args.path}")

    # as many calls at once as Ray's memory (and CPUs) allow; each actor reserves per_call
    sweep = chunked(chunk_size="auto", memory_per_call=per_call)(estimate_pi)
    chunk_size = sweep.chunk_size
    print(f"{args.calls} calls of ~{per_call / 2**20:.0f} MB each; "
          f"{chunk_size} at once (chunk_size='auto' from the memory budget)")
    sampler = MemorySampler()
    identities = ray.get([actor._tc_identity.remote() for actor in sweep.actors])
    sampler.pids.update(pid for _, pid in identities)
    sampler.start()
    started = time.perf_counter()
    try:
        rows = [[seed, points, args.rounds] for seed in range(args.calls)]
        estimates = sweep.map(rows, path=args.path)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished calls are saved in {args.path}; run again to resume",
              file=sys.stderr)
        return 130
    wall = time.perf_counter() - started
    sampler.stop()

    stats = sweep.stats
    busy = sum(stats.busy_time.values())
    estimate = float(np.mean(estimates))
    print(f"pi ~ {estimate:.6f} (error {abs(estimate - math.pi):.1e})")
    print(f"calls run now:     {stats.calls} (resumed from checkpoint: "
          f"{args.calls - stats.calls})")
    print(f"wall time:         {wall:.1f} s")
    if stats.calls and wall > 0:
        print(f"speed-up vs serial: {busy / wall:.2f}x (time inside calls / wall time)")
    print(f"peak concurrency:  {stats.peak_concurrency} (chunk_size {chunk_size})")
    print(f"peak memory:       {sampler.peak / 2**30:.2f} GiB (driver + workers, sampled)")
    print(f"checkpoint:        {args.path} (python -m thread_chunks inspect {args.path})")
    sweep.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
