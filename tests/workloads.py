"""Functions the tests run on actors, in an importable module (pickled by reference)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from thread_chunks import LabelledActor, chunked


def square(x: int) -> int:
    return x * x


def add(x: int, y: int = 0) -> int:
    return x + y


def negate(x: int) -> int:
    return -x


def interval(x: int, seconds: float = 0.05) -> tuple[int, float, float, int]:
    """Sleep, and report when this call ran and in which process."""
    start = time.time()
    time.sleep(seconds)
    return x, start, time.time(), os.getpid()


def assigned(_: Any = None) -> dict[str, float]:
    """The Ray resources this call's actor holds."""
    import ray

    return ray.get_runtime_context().get_assigned_resources()


def pid(_: Any = None) -> int:
    return os.getpid()


def wait_for(x: int, path: str, timeout: float = 60.0) -> int:
    """Block until ``path`` exists (made by another call), then return x."""
    deadline = time.time() + timeout
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.01)
    return x


def touch_then(x: int, path: str) -> int:
    Path(path).touch()
    return x


def count_and_square(x: int, directory: str) -> int:
    """Leave one file per execution (side effect counted by crash tests)."""
    Path(directory, f"{x}-{os.getpid()}-{time.monotonic_ns()}").touch()
    return x * x


def fail_on(x: int, bad: int = 3) -> int:
    if x == bad:
        raise ValueError(f"bad value {x}")
    return x


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals that overlap at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda ev: (ev[0], ev[1]))
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


@chunked(chunk_size=2)
def cube(x: int) -> int:
    """Cube a number."""
    return x * x * x


@chunked(chunk_size=2)
def fib(n: int) -> int:
    """Calls itself by its global name: on a worker that name is the Chunked object."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class CountingActor(LabelledActor):
    """Counts how often its function was replaced."""

    def __init__(self, func: Any) -> None:
        super().__init__(func)
        self.set_count = 0

    def set_func(self, func: Any) -> None:
        self.set_count += 1
        super().set_func(func)

    def sets(self) -> int:
        return self.set_count


class OffsetActor(LabelledActor):
    """Worker state: adds an offset to every result (run() is overridden)."""

    offset = 1000

    def run(self, label: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        label, value = super().run(label, *args, **kwargs)
        return label, value + self.offset


def slow_count(x: int, directory: str, seconds: float = 0.1) -> int:
    """Count this execution with a file, then take a while."""
    Path(directory, f"{x}-{os.getpid()}-{time.monotonic_ns()}").touch()
    time.sleep(seconds)
    return x * x


def executions(directory: str | Path) -> dict[int, int]:
    """How often each row ran, from the files left by slow_count/count_and_square."""
    counts: dict[int, int] = {}
    for entry in Path(directory).iterdir():
        index = int(entry.name.split("-")[0])
        counts[index] = counts.get(index, 0) + 1
    return counts


_held: list[Any] = []


def lock_checkpoint(x: int, path: str, at: int) -> int:
    """On row ``at``, take the checkpoint's write lock and keep it (a save that must fail)."""
    if x == at:
        import sqlite3

        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        _held.append(conn)
    return x


def first_time(directory: str, key: str) -> bool:
    """True once per (directory, key): the first attempt of something, across processes."""
    try:
        fd = os.open(os.path.join(directory, f"once-{key}"), os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def flaky(x: int, directory: str, failures: int) -> int:
    """Raise ValueError the first ``failures`` times row x runs."""
    for attempt in range(failures):
        if first_time(directory, f"{x}-{attempt}"):
            raise ValueError(f"flaky failure {attempt} of row {x}")
    return x


def exit_once(x: int, directory: str, bad: int) -> int:
    """Row ``bad`` ends its worker process the first time it runs."""
    if x == bad and first_time(directory, f"exit-{x}"):
        os._exit(1)
    return x


def always_exit(x: int, bad: int) -> int:
    if x == bad:
        os._exit(3)
    return x


def announce_and_sleep(x: int, directory: str, seconds: float) -> int:
    """Leave ``running-<x>-<pid>`` (so a test can kill this worker), then sleep."""
    Path(directory, f"running-{x}-{os.getpid()}").touch()
    time.sleep(seconds)
    return x


def sleep_for(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


def hold_memory(x: int, megabytes: int, seconds: float) -> int:
    """Hold ``megabytes`` of touched memory for ``seconds``."""
    block = bytearray(megabytes * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(seconds)
    return x + len(block) * 0


class SlowStart(LabelledActor):
    """An actor that takes 2 s to start (a cold worker on a loaded machine)."""

    def __init__(self, func: Any) -> None:
        time.sleep(2.0)
        super().__init__(func)


def gate_then_sleep(x: int, path: str, seconds: float) -> tuple[int, int]:
    """Wait for ``path`` to exist, then sleep; report the row and this process."""
    wait_for(x, path)
    time.sleep(seconds)
    return x, os.getpid()


def checksum(block: Any, i: int) -> tuple[float, bool, int]:
    """Read a large argument: its sum plus i, whether it can be written, this process."""
    import numpy as np

    return float(np.asarray(block).sum()) + i, bool(getattr(block, "flags", None) and
                                                    block.flags.writeable), os.getpid()


def pick(values: Any, i: int) -> Any:
    return values[i]


def kind(value: Any) -> str:
    """The type the function received, and inside a list, the type of its first item."""
    if isinstance(value, list):
        return f"list[{type(value[0]).__name__}]"
    return type(value).__name__


def head_waits(x: int, gate: str, directory: str) -> int:
    """Row 0 waits for ``gate``; every other row leaves a marker file and returns at once."""
    if x == 0:
        wait_for(x, gate, timeout=120)
    else:
        Path(directory, f"{x}-{os.getpid()}-{time.monotonic_ns()}").touch()
    return x


def first_waits_for_the_others(x: int, directory: str, others: int) -> int:
    """Row 0 waits until ``others`` other rows have left a marker file in ``directory`` (it
    fails after 120 s); every other row leaves one and returns at once."""
    if x == 0:
        deadline = time.time() + 120
        while len(os.listdir(directory)) < others:
            if time.time() > deadline:
                raise TimeoutError(f"row 0 waited 120 s for {others} other rows to run")
            time.sleep(0.01)
    else:
        Path(directory, f"{x}-{os.getpid()}").touch()
    return x


class FirstFastOthersSlow(LabelledActor):
    """The first actor to start (per ``marker`` directory, set by a subclass) starts at once;
    the others take 3 s (one actor started late)."""

    marker = ""

    def __init__(self, func: Any) -> None:
        super().__init__(func)
        if not self.marker or not first_time(self.marker, "start"):
            time.sleep(3.0)


def behind_gate(x: int, gate: str, timeout: float = 60.0) -> tuple[int, bool]:
    """Wait until ``gate`` exists; return x and whether it opened (False after ``timeout``)."""
    deadline = time.time() + timeout
    while not os.path.exists(gate):
        if time.time() >= deadline:
            return x, False
        time.sleep(0.01)
    return x, True


def scaled(x: float, n: int = 1, *, offset: float = 0.0) -> float:
    """A function with positional, defaulted and keyword-only parameters (typed rows)."""
    return x * n + offset


def total(*blocks: Any) -> float:
    """The sum of every array given."""
    return float(sum(block.sum() for block in blocks))


def returns_lock(x: int, bad: int, directory: str) -> Any:
    """Row ``bad`` returns a lock (which cannot be pickled); each call leaves a file."""
    Path(directory, f"{x}-{os.getpid()}-{time.monotonic_ns()}").touch()
    if x == bad:
        import threading

        return threading.Lock()
    return x


def sized(x: int, big: int, nbytes: int) -> bytes:
    """``nbytes`` zero bytes for row ``big``, a short value for the others."""
    return bytes(nbytes) if x == big else x.to_bytes(4, "little")


def head_field(x: int, gate: str, directory: str) -> Any:
    """1 MiB of float64; row 0 waits until ``gate`` exists, the others leave a mark."""
    import numpy as np

    if x == 0:
        wait_for(0, gate)
    else:
        Path(directory, str(x)).touch()
    return np.full(2**17, float(x))


def slow_fail(x: int, directory: str, seconds: float, bad: int = -1) -> int:
    """slow_count, raising ValueError for row ``bad``."""
    if x == bad:
        raise ValueError(f"bad row {x}")
    return slow_count(x, directory, seconds)


def mark_memory(x: int, megabytes: int, seconds: float, directory: str) -> int:
    """Hold ``megabytes`` of touched memory for ``seconds``, then leave a file saying when
    the call ran (``start end``, epoch seconds)."""
    start = time.time()
    block = b"\x01" * (megabytes * 2**20)
    time.sleep(seconds)
    Path(directory, f"{x}-{os.getpid()}-{time.monotonic_ns()}").write_text(
        f"{start} {time.time()}")
    return x + block[-1] - 1


def spans(directory: str | Path) -> list[tuple[float, float]]:
    """(start, end) of every call that left a file with mark_memory, by start."""
    return sorted(tuple(float(t) for t in entry.read_text().split())  # type: ignore[misc]
                  for entry in Path(directory).iterdir())


def most_at_once(spans: list[tuple[float, float]], after: float = 0.0) -> int:
    """The most calls running at once from ``after`` on."""
    return max_overlap([(max(start, after), end) for start, end in spans if end > after])


class Tagged:
    """A value that tells how it travelled: by pickle (its own way) or by a serializer
    given to ``ray.util.register_serializer``."""

    def __init__(self, via: str = "pickle") -> None:
        self.via = via


def registered_tagged(_state: str) -> Tagged:
    return Tagged("registered")


def via(value: Tagged) -> str:
    return value.via
