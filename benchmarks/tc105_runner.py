"""Runs inside the thread-chunks 1.0.5 venv: times one workload, prints one RESULT line."""

import json
import os
import sys
import tempfile
import time

import ray

from thread_chunks import Chunker  # thread-chunks 1.0.5

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads


def main() -> None:
    name, count, arg, checkpoint = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    func = {"burn": workloads.burn, "double": workloads.double}[name]
    params = [[arg if name == "burn" else i] for i in range(count)]
    ray.init(num_cpus=2, include_dashboard=False)
    chunker = Chunker(func, chunk_size=2, progress_bar=False, persistent=True)
    chunker(params[:4])  # warm the actors
    path = None
    if checkpoint == "yes":
        path = os.path.join(tempfile.mkdtemp(), "run.pkl")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    out = chunker(params, path=path)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    assert len(out) == count
    print("RESULT " + json.dumps({"wall": wall, "cpu": cpu}), flush=True)


if __name__ == "__main__":
    main()
