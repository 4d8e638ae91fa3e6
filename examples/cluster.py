"""Run a sweep on a Ray cluster: the same code as on a laptop.

Start a cluster with the ``ray start`` command line (here both nodes on one machine):

    ray start --head --port=6379 --num-cpus=1
    ray start --address=127.0.0.1:6379 --num-cpus=1
    RAY_ADDRESS=127.0.0.1:6379 python examples/cluster.py
    ray stop

With ``RAY_ADDRESS`` set, thread-chunks connects to that cluster instead of starting Ray, and
never shuts it down. Each actor reserves the memory one call needs, so Ray never places more
calls on a node than fit, and SPREAD puts the actors on different nodes.
"""

from __future__ import annotations

import collections
import socket

import ray

from thread_chunks import chunked


@chunked(chunk_size="auto", memory_per_call=256 * 2**20, progress_bar=False,
         actor_options={"scheduling_strategy": "SPREAD"})
def simulate(seed: int) -> tuple[int, str]:
    """A stand-in for a memory-heavy call: 256 MB of work, and where it ran."""
    block = bytearray(256 * 2**20)
    return seed + len(block) * 0, ray.get_runtime_context().get_node_id()[:8]


def main() -> None:
    results = simulate.map([[seed] for seed in range(12)])
    print(f"{simulate.chunk_size} calls at once on {len(ray.nodes())} node(s), "
          f"driver on {socket.gethostname()}")
    for node, count in sorted(collections.Counter(node for _, node in results).items()):
        print(f"  node {node}: {count} calls")
    assert [seed for seed, _ in results] == list(range(12))


if __name__ == "__main__":
    main()
