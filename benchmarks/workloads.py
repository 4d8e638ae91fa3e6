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


class Caller:
    """An actor for ray.util.ActorPool whose arguments stay top-level, so Ray resolves an
    ObjectRef passed among them (``Worker.run`` nests them in a tuple, where Ray would not)."""

    def call(self, func: object, *args: object) -> object:
        return func(*args)  # type: ignore[operator]


def touch(block: object, i: int, seconds: float = 0.1) -> float:
    """Read one float64 of every 4 KiB page of ``block`` (so each page is mapped), then sleep:
    a call that uses a large shared array without copying it."""
    total = float(block[::512].sum())  # type: ignore[index]
    time.sleep(seconds)
    return total + i


def head_sleeps(i: int, payload: bytes, seconds: float) -> int:
    """Row 0 sleeps ``seconds``; every other row returns at once."""
    if i == 0:
        time.sleep(seconds)
    return i + len(payload)


def nap(seconds: float) -> float:
    """Sleep: a call whose cost is all on the worker."""
    time.sleep(seconds)
    return seconds


def hold(i: int, megabytes: int, seconds: float) -> int:
    """Hold ``megabytes`` MB (10^6 bytes) of touched memory for ``seconds``."""
    block = b"\x01" * (megabytes * 10**6)
    time.sleep(seconds)
    return i + block[-1] - 1
