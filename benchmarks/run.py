"""Side-by-side benchmarks: thread-chunks against its peers, measured in the same run.

    make bench                 # everything (needs network-free PyPI access for the 1.0.5 venv)
    python benchmarks/run.py --quick --skip-105

Prints, per workload, each peer's median wall time over the repeats and the ratio
ours / peer (below 1 means we are faster). Absolute seconds are noisy on shared machines;
compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import ray
from ray.util import ActorPool

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import workloads  # noqa: E402

import thread_chunks  # noqa: E402

VENV_105 = ROOT / ".venv-tc105"


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall0, time.process_time() - cpu0


def median_of(repeats: int, fn: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    runs = [fn() for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def ensure_105() -> Path | None:
    python = VENV_105 / "bin" / "python"
    if not python.exists():
        print("setting up thread-chunks 1.0.5 in .venv-tc105 (its dependencies by hand, "
              "since 1.0.5 declares none) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV_105)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "thread-chunks==1.0.5",
                        "ray", "tqdm", "saveable-objects", "numpy", "cloudpickle"], check=True)
    return python


def run_105(python: Path, name: str, count: int, arg: int, checkpoint: bool) -> tuple[float, float]:
    proc = subprocess.run(
        [str(python), str(HERE / "tc105_runner.py"), name, str(count), str(arg),
         "yes" if checkpoint else "no"],
        capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=1800,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            data = json.loads(line[7:])
            return float(data["wall"]), float(data["cpu"])
    raise RuntimeError(f"thread-chunks 1.0.5 run failed:\n{proc.stderr[-3000:]}")


def table(title: str, rows: dict[str, tuple[float, float]], ours: str) -> None:
    base = rows[ours][0]
    print(f"\n## {title}")
    print(f"{'peer':34} {'wall (s)':>9} {'driver CPU':>11} {'ours/peer':>10}")
    for peer, (wall, cpu) in rows.items():
        print(f"{peer:34} {wall:9.3f} {cpu / wall:10.0%} {base / wall:10.2f}")


def compare(name: str, func: Callable[..., Any], params: list[list[int]], repeats: int,
            py105: Path | None, arg: int) -> dict[str, tuple[float, float]]:
    rows: dict[str, tuple[float, float]] = {}
    chunker = thread_chunks.Chunker(func, chunk_size=2, progress_bar=False, persistent=True)
    chunker(params[:4])
    rows["thread-chunks (this)"] = median_of(repeats, lambda: timed(lambda: chunker(params)))

    # spawn, not fork: forking a process that runs Ray's threads is unsafe
    pool = multiprocessing.get_context("spawn").Pool(2)
    pool.starmap(func, params[:4])
    rows["multiprocessing.Pool(2).starmap"] = median_of(
        repeats, lambda: timed(lambda: pool.starmap(func, params)))
    pool.close()
    pool.join()

    parallel = joblib.Parallel(n_jobs=2)
    parallel(joblib.delayed(func)(*p) for p in params[:4])
    rows["joblib.Parallel(n_jobs=2)"] = median_of(
        repeats, lambda: timed(lambda: parallel(joblib.delayed(func)(*p) for p in params)))

    actors = [ray.remote(workloads.Worker).remote() for _ in range(2)]
    actor_pool = ActorPool(actors)
    jobs = [(func, tuple(p)) for p in params]
    list(actor_pool.map(lambda a, v: a.run.remote(v), jobs[:4]))
    rows["ray.util.ActorPool(2 actors)"] = median_of(
        repeats, lambda: timed(lambda: list(actor_pool.map(lambda a, v: a.run.remote(v), jobs))))

    if py105 is not None:
        rows["thread-chunks 1.0.5"] = median_of(
            repeats, lambda: run_105(py105, name, len(params), arg, False))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    parser.add_argument("--skip-105", action="store_true", help="leave out thread-chunks 1.0.5")
    parser.add_argument("--only", choices=["cpu", "tiny", "checkpoint"], action="append")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    only = set(args.only or ["cpu", "tiny", "checkpoint"])
    py105 = None if args.skip_105 else ensure_105()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    n = workloads.calibrate(0.05)
    print(f"# thread-chunks benchmarks: 2 workers, {os.cpu_count()} CPUs, "
          f"{repeats} repeat(s), median shown")

    if "cpu" in only:
        rows = compare("burn", workloads.burn, [[n] for _ in range(40)], repeats, py105, n)
        table("cpu: 40 calls of ~50 ms pure-Python work", rows, "thread-chunks (this)")
        ours = rows["thread-chunks (this)"]
        pool = rows["multiprocessing.Pool(2).starmap"]
        print(f"goal: wall <= 1.10 x multiprocessing.Pool -> {ours[0] / pool[0]:.2f} x; "
              f"driver CPU <= 10 % of wall -> {ours[1] / ours[0]:.0%}")
    if "tiny" in only:
        count = 2000
        rows = compare("double", workloads.double, [[i] for i in range(count)], repeats, py105,
                       0)
        table(f"tiny: {count} calls of 2*x", rows, "thread-chunks (this)")
        if "thread-chunks 1.0.5" in rows:
            print(f"goal: >= 3 x faster than 1.0.5 -> "
                  f"{rows['thread-chunks 1.0.5'][0] / rows['thread-chunks (this)'][0]:.1f} x")
    if "checkpoint" in only:
        count = 1000 if args.quick else 8000
        params = [[i] for i in range(count)]
        rows = {}
        chunker = thread_chunks.Chunker(workloads.double, chunk_size=2, progress_bar=False,
                                        persistent=True)
        chunker(params[:4])
        many = 1 if args.quick else 9  # a run of tens of milliseconds: more repeats
        rows["thread-chunks (this), no path"] = median_of(
            many, lambda: timed(lambda: chunker(params)))

        def with_path() -> tuple[float, float]:
            path = Path(tempfile.mkdtemp()) / "run.ckpt"
            return timed(lambda: chunker(params, path=path))

        rows["thread-chunks (this), path="] = median_of(many, with_path)
        if py105 is not None:
            rows["thread-chunks 1.0.5, no path"] = run_105(py105, "double", count, 0, False)
            rows["thread-chunks 1.0.5, path="] = run_105(py105, "double", count, 0, True)
        table(f"checkpoint: {count} tiny calls with and without path=", rows,
              "thread-chunks (this), path=")
        ratio = rows["thread-chunks (this), path="][0] / rows["thread-chunks (this), no path"][0]
        print(f"goal: path= / no path <= 1.5 (aim 1.2) -> {ratio:.2f}")
        if py105 is not None:
            old = rows["thread-chunks 1.0.5, path="][0] / rows["thread-chunks 1.0.5, no path"][0]
            print(f"thread-chunks 1.0.5: path= / no path -> {old:.1f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
