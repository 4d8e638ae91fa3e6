"""The sweep that examples/slurm_sweep.sh runs: one checkpointed ``.map`` on the Ray the
script started (``RAY_ADDRESS``), or on a local Ray where there is no Slurm.

Stopped by SIGTERM (Slurm's preemption, ``scancel``, the time limit with ``--signal``) or
Ctrl-C, it keeps its checkpoint consistent and exits with status 143; run again with the
same ``--path``, it resumes: only the rows not yet recorded run.
"""

from __future__ import annotations

import argparse
import math
import socket
import sys
import time

import thread_chunks
from thread_chunks import chunked

thread_chunks.config.ray_config = {"include_dashboard": False}


@chunked(chunk_size="auto", progress_bar=False)
def simulate(seed: int, seconds: float) -> float:
    """A stand-in for one expensive simulation."""
    time.sleep(seconds)
    return math.sin(seed) ** 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--path", required=True, help="the checkpoint (on shared storage)")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=0.05, help="each call's duration")
    args = parser.parse_args(argv)
    rows = [[seed, args.seconds] for seed in range(args.rows)]
    try:
        results = simulate.map(rows, path=args.path)
    except KeyboardInterrupt:
        print(f"stopped: the checkpoint {args.path} is kept; run again to resume",
              file=sys.stderr)
        return 143
    print(f"{len(results)} rows on {socket.gethostname()}: {simulate.stats.calls} ran now, "
          f"{len(results) - simulate.stats.calls} resumed from {args.path}; "
          f"mean {sum(results) / len(results):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
