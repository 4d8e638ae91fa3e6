"""Multi-node scenarios on a real Ray cluster (ray.cluster_utils.Cluster), run as a script.

A head (2 CPUs, 2 logical GPUs) and two worker nodes of 1 CPU each start on this machine;
the script connects to them, runs every scenario, and prints one JSON line (read by
test_cluster.py).
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from typing import Any

import ray
from ray.cluster_utils import Cluster

from thread_chunks import chunked

GiB = 2**30


def where(x: int, seconds: float = 0.0) -> tuple[int, str]:
    time.sleep(seconds)
    return x, ray.get_runtime_context().get_node_id()


def gpus(x: int) -> tuple[int, list[str], str | None]:
    return x, [str(i) for i in ray.get_gpu_ids()], os.environ.get("CUDA_VISIBLE_DEVICES")


def lost_node(cluster: Cluster, out: dict[str, Any]) -> None:
    """Actors pinned to two worker nodes; one node is lost mid-run and no other can take its
    actor: the run goes on with one actor, warns, and uses a new node once one is added.
    Then every worker node is lost: the run fails after placement_timeout instead of
    waiting forever."""
    workers = [cluster.add_node(num_cpus=1, resources={"worker": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    pinned = {"num_cpus": 1, "resources": {"worker": 1}}
    f = chunked(chunk_size=2, progress_bar=False, batch_size=1, actor_options=pinned)(where)
    seen: list[tuple[int, str]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for item in f.imap([[i, 0.5] for i in range(60)]):
            seen.append(item)
            if len(seen) == 4:  # lose the node that did the most
                used = [node for _, node in seen]
                victim = max(workers, key=lambda n: used.count(n.node_id))
                out["lost_node"] = victim.node_id
                cluster.remove_node(victim, allow_graceful=False)
            warned = any(c.category.__name__ == "ConcurrencyReducedWarning" for c in caught)
            if warned and "added_node" not in out:  # add_node must run in the main thread
                workers.append(cluster.add_node(num_cpus=1, resources={"worker": 1}))
                out["added_node"] = workers[-1].node_id
                out["added_after"] = len(seen)
    out["lost"] = seen
    out["lost_warnings"] = [str(c.message) for c in caught
                            if c.category.__name__ == "ConcurrencyReducedWarning"]
    f.close()

    g = chunked(chunk_size=2, progress_bar=False, batch_size=1, actor_options=pinned,
                placement_timeout=5)(where)
    done: list[tuple[int, str]] = []

    def lose_all() -> None:
        while len(done) < 2:
            time.sleep(0.05)
        for node in workers:
            if node.node_id != out["lost_node"]:
                cluster.remove_node(node, allow_graceful=False)

    thread = threading.Thread(target=lose_all)
    thread.start()
    try:
        for item in g.imap([[i, 0.5] for i in range(200)]):
            done.append(item)
        out["all_lost_error"] = ""
    except Exception as exc:
        out["all_lost_error"] = f"{type(exc).__name__}: {exc}"
    thread.join()
    out["all_lost_done"] = len(done)


def main() -> None:
    warnings.simplefilter("ignore")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 2, "memory": 1 * GiB, "include_dashboard": False})
    first = cluster.add_node(num_cpus=1, memory=2 * GiB)
    second = cluster.add_node(num_cpus=1, memory=2 * GiB, resources={"special": 2})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    special = next(i for i, n in nodes.items() if n["Resources"].get("special"))
    out: dict[str, Any] = {"nodes": len(nodes), "special_node": special}

    spread = chunked(chunk_size=3, progress_bar=False, batch_size=1,
                     actor_options={"scheduling_strategy": "SPREAD", "num_cpus": 1})(where)
    out["spread"] = spread.map([[i, 0.05] for i in range(12)])
    out["spread_actors"] = [ray.get(a._tc_identity.remote())[0] for a in spread.actors]
    spread.close()

    pinned = chunked(chunk_size=2, progress_bar=False,
                     actor_options={"resources": {"special": 1}, "num_cpus": 0})(where)
    out["pinned"] = pinned.map([[i] for i in range(6)])
    pinned.close()

    auto = chunked(chunk_size="auto", memory_per_call=int(1.5 * GiB), progress_bar=False)(where)
    out["auto_size"] = auto.chunk_size
    out["auto"] = auto.map([[i] for i in range(4)])
    auto.close()

    gpu = chunked(chunk_size=4, progress_bar=False,
                  actor_options={"num_gpus": 0.5, "num_cpus": 0})(gpus)
    out["gpus"] = gpu.map([[i] for i in range(8)])
    out["gpu_actors"] = [ray.get(a.run.remote(i, i))[1][1] for i, a in enumerate(gpu.actors)]
    gpu.close()

    # a worker node goes away mid-run: its calls run again on the others, nothing is lost
    survive = chunked(chunk_size=3, progress_bar=False, batch_size=1, max_worker_deaths=5,
                      actor_options={"scheduling_strategy": "SPREAD", "num_cpus": 1})(where)
    seen: list[tuple[int, str]] = []

    def remove_when_busy() -> None:
        while len(seen) < 6:
            time.sleep(0.05)
        used = [node for _, node in seen]
        victim = max((first, second), key=lambda n: used.count(n.node_id))
        out["removed_node"] = victim.node_id
        cluster.remove_node(victim, allow_graceful=False)

    remover = threading.Thread(target=remove_when_busy)
    remover.start()
    for item in survive.imap([[i, 0.3] for i in range(30)]):
        seen.append(item)
    remover.join()
    out["survive"] = seen
    out["survive_deaths"] = survive.stats.worker_deaths
    survive.close()
    lost_node(cluster, out)
    print("RESULT " + json.dumps(out), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
