"""Many sweeps on one pool: each run's end stops only its own calls, timeouts count from the
start of a call (never time queued behind another run), free actors go to runs in turn, and
each run keeps its own statistics. What ran is counted by marker files, never timed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from tests import workloads as w
from thread_chunks import chunked

pytestmark = pytest.mark.usefixtures("ray_running")


def _rows(n: int, directory: Path, seconds: float, start: int = 0) -> list[list[Any]]:
    directory.mkdir(exist_ok=True)
    return [[start + i, str(directory), seconds] for i in range(n)]


def _started(directory: Path, count: int = 1, timeout: float = 60) -> None:
    """Block until ``count`` calls have left their mark in ``directory``."""
    deadline = time.time() + timeout
    while len(list(directory.iterdir())) < count:
        assert time.time() < deadline, f"no {count} calls started in {directory}"
        time.sleep(0.02)


class _Survivor:
    """A sweep of 6 rows of 0.7 s run by ``f.map`` in a thread of its own, started now and
    running its first call when this returns."""

    def __init__(self, f: Any, directory: Path) -> None:
        self.directory = directory
        self.result: dict[str, Any] = {}
        rows = _rows(6, directory, 0.7)
        self.thread = threading.Thread(target=lambda: self.result.update(out=f.map(rows)))
        self.thread.start()
        _started(directory)

    def check(self) -> None:
        """It completed, every row right, each run exactly once."""
        self.thread.join(120)
        assert self.result["out"] == [i * i for i in range(6)]
        assert w.executions(self.directory) == {i: 1 for i in range(6)}


def test_cancelling_one_async_sweep_leaves_the_other_untouched(tmp_path: Path) -> None:
    survivor_dir, doomed_dir = tmp_path / "survivor", tmp_path / "doomed"
    f = chunked(chunk_size=2, batch_size=1, max_worker_deaths=1)(w.slow_count)
    survivor_rows = _rows(6, survivor_dir, 0.7)
    doomed_rows = _rows(6, doomed_dir, 0.7, start=100)

    async def main() -> list[int]:
        survivor = asyncio.ensure_future(f.amap(survivor_rows))
        doomed = asyncio.ensure_future(f.amap(doomed_rows))
        while not (any(survivor_dir.iterdir()) and any(doomed_dir.iterdir())):
            await asyncio.sleep(0.02)  # both are running a call
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return await survivor

    assert asyncio.run(main()) == [i * i for i in range(6)]
    assert w.executions(survivor_dir) == {i: 1 for i in range(6)}  # none killed, none rerun
    assert f.stats.calls == 6 and f.stats.worker_deaths == 0 and f.stats.retries == 0
    f.close()


def test_breaking_off_one_threads_imap_leaves_another_threads_map_untouched(
        tmp_path: Path) -> None:
    f = chunked(chunk_size=2, batch_size=1, max_worker_deaths=1)(w.slow_count)
    survivor = _Survivor(f, tmp_path / "survivor")
    broken = f.imap(_rows(6, tmp_path / "broken", 0.7, start=100))
    assert isinstance(broken, Generator)
    assert next(broken) == 100 * 100
    broken.close()  # break: its calls stop, the other thread's do not
    survivor.check()
    f.close()


def test_a_failing_sweep_leaves_the_other_untouched(tmp_path: Path) -> None:
    f = chunked(chunk_size=2, batch_size=1, max_worker_deaths=1)(w.slow_fail)
    survivor = _Survivor(f, tmp_path / "survivor")
    failing = [[100 + i, str(tmp_path / "failing"), 0.7, 101] for i in range(6)]
    (tmp_path / "failing").mkdir()
    with pytest.raises(ValueError, match="bad row 101"):
        f.map(failing)  # on_error="raise": this run ends at row 101, its calls stop
    survivor.check()
    f.close()


def test_timeouts_count_from_the_start_of_a_call_not_its_wait_behind_other_sweeps(
        tmp_path: Path) -> None:
    """Three sweeps of 0.4 s calls on 2 actors, timeout=1.0: a call may wait behind the
    others' calls for longer than that, and must not be timed out for it."""
    f = chunked(chunk_size=2, timeout=1.0)(w.slow_count)
    sweeps = [_rows(6, tmp_path / f"s{k}", 0.4, start=10 * k) for k in range(3)]
    results: dict[int, Any] = {}

    def sweep(k: int) -> None:
        results[k] = f.map(sweeps[k], on_error="return")

    threads = [threading.Thread(target=sweep, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for k in range(3):
        assert results[k] == [(10 * k + i) ** 2 for i in range(6)], results[k]
        assert w.executions(tmp_path / f"s{k}") == {10 * k + i: 1 for i in range(6)}
    f.close()


def test_a_short_sweep_gets_its_turn_while_a_long_one_runs(tmp_path: Path) -> None:
    long_dir, short_dir = tmp_path / "long", tmp_path / "short"
    f = chunked(chunk_size=2, batch_size=1)(w.slow_count)
    long_rows = _rows(16, long_dir, 0.25)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(out=f.map(long_rows)))
    thread.start()
    _started(long_dir, 2)
    assert f.map(_rows(4, short_dir, 0.25, start=100)) == [(100 + i) ** 2 for i in range(4)]
    long_done = len(list(long_dir.iterdir()))
    assert f.stats.calls == 4  # the short run's own statistics
    thread.join(120)
    # free actors alternate between the two runs: the short one did not wait for the long
    assert long_done <= 12, long_done
    assert result["out"] == [i * i for i in range(16)]
    assert f.stats.calls == 16  # the last run to finish
    f.close()
