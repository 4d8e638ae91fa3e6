"""The benchmark workloads, importable by every peer (and by thread-chunks 1.0.5's venv)."""

from __future__ import annotations

import time


def burn(n: int) -> int:
    """Pure-Python CPU work: n loop iterations."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def double(x: int) -> int:
    return 2 * x


def calibrate(seconds: float = 0.05) -> int:
    """How many burn() iterations take about ``seconds`` on this machine."""
    n = 10_000
    while True:
        start = time.perf_counter()
        burn(n)
        took = time.perf_counter() - start
        if took > 0.01:
            return max(1, int(n * seconds / took))
        n *= 4


class Worker:
    """An actor for ray.util.ActorPool."""

    def run(self, func_and_args: tuple[object, tuple[object, ...]]) -> object:
        func, args = func_and_args
        return func(*args)  # type: ignore[operator]
