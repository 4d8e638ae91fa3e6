"""Run a sweep on a Ray cluster: the same code as on a laptop.

Rehearse it with a head and a worker node on one machine; ``docs/scaling-out.md`` gives the
commands (token authentication included) and how to stop just those two nodes. Then::

    RAY_ADDRESS=127.0.0.1:6379 python examples/cluster.py --nodes 2

With ``RAY_ADDRESS`` set, thread-chunks connects to that cluster instead of starting Ray, and
never shuts it down. Each actor reserves the memory one call needs, so Ray never places more
calls on a node than fit, and SPREAD puts the actors on different nodes. ``--nodes N`` first
waits (up to a minute) until N nodes have joined, so that the pool is sized on all of them.
"""

from __future__ import annotations

import argparse
import collections
import socket
import time

import ray

from thread_chunks import chunked


@chunked(chunk_size="auto", memory_per_call=256 * 2**20, progress_bar=False,
         actor_options={"scheduling_strategy": "SPREAD"})
def simulate(seed: int) -> tuple[int, str]:
    """A stand-in for a memory-heavy call: 256 MB of work, and where it ran."""
    block = bytearray(256 * 2**20)
    return seed + len(block) * 0, ray.get_runtime_context().get_node_id()[:8]


def wait_for_nodes(count: int, timeout: float = 60.0) -> None:
    """Connect to the cluster (``RAY_ADDRESS``) and block until ``count`` nodes are alive."""
    ray.init()
    deadline = time.monotonic() + timeout
    while (alive := sum(bool(node["Alive"]) for node in ray.nodes())) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {alive} of {count} nodes joined within {timeout:g} s")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=0,
                        help="wait until this many nodes have joined the cluster")
    args = parser.parse_args()
    if args.nodes:
        wait_for_nodes(args.nodes)
    results = simulate.map([[seed] for seed in range(12)])
    print(f"{simulate.chunk_size} calls at once on {len(ray.nodes())} node(s), "
          f"driver on {socket.gethostname()}")
    for node, count in sorted(collections.Counter(node for _, node in results).items()):
        print(f"  node {node}: {count} calls")
    assert [seed for seed, _ in results] == list(range(12))


if __name__ == "__main__":
    main()
