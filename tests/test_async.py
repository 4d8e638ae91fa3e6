"""Async maps: ``await f.amap(...)`` and ``async for ... in f.aimap(...)`` drive the same
scheduler as ``.map`` without blocking the event loop; cancelling stops the calls in flight."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import pytest
import ray
from ray.exceptions import RayActorError

from tests import workloads as w
from thread_chunks import chunked
from thread_chunks._checkpoint import Store
from thread_chunks._engine import AsyncWake

pytestmark = pytest.mark.usefixtures("ray_running")


async def _until(condition: object, what: str, limit: float = 60.0) -> None:
    """Let the loop run until ``condition()`` holds (a bounded wait for the actors)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, f"not seen within {limit} s: {what}"
        await asyncio.sleep(0.02)


def test_amap_and_aimap_give_what_map_and_imap_give() -> None:
    f = chunked(chunk_size=2)(w.square)

    async def main() -> tuple[list[int], list[int], list[int]]:
        mapped = await f.amap([[i] for i in range(30)])
        ordered = [v async for v in f.aimap([i] for i in range(30))]
        unordered = [v async for v in f.aimap([[i] for i in range(30)], ordered=False)]
        return mapped, ordered, unordered

    mapped, ordered, unordered = asyncio.run(main())
    squares = [i * i for i in range(30)]
    assert mapped == ordered == squares == f.map([[i] for i in range(30)])
    assert sorted(unordered) == squares
    assert f.stats.calls == 30


def test_amap_on_error_return_and_raise() -> None:
    f = chunked(chunk_size=2)(w.fail_on)
    got = asyncio.run(f.amap([[i] for i in range(5)], on_error="return"))
    assert got[:3] == [0, 1, 2] and got[4] == 4
    assert isinstance(got[3], ValueError)
    with pytest.raises(ValueError, match="row 3"):
        asyncio.run(f.amap([[i] for i in range(5)]))


def test_the_event_loop_keeps_running_while_the_calls_do(tmp_path: Path) -> None:
    """The rows wait for a gate that only a coroutine on the same loop opens, after it has
    ticked while the sweep was already running: a blocked loop would keep it shut."""
    f = chunked(chunk_size=2, batch_size=1)(w.behind_gate)
    gate = tmp_path / "gate"

    async def main() -> tuple[list[tuple[int, bool]], int]:
        ticks = 0
        sweep = asyncio.create_task(f.amap([[i, str(gate), 60.0] for i in range(6)]))

        async def ticker() -> None:
            nonlocal ticks
            while not sweep.done():
                await asyncio.sleep(0.01)
                ticks += 1
                if ticks == 5:
                    gate.touch()

        await asyncio.gather(sweep, ticker())
        return sweep.result(), ticks

    results, ticks = asyncio.run(main())
    assert results == [(i, True) for i in range(6)]  # every row saw the gate open
    assert ticks >= 5


def test_cancelling_the_task_stops_the_calls_in_flight_and_the_pool_stays_usable(
        tmp_path: Path) -> None:
    # memory_budget=None: both calls start at once (no first call alone to learn memory)
    f = chunked(chunk_size=2, batch_size=1, memory_budget=None)(w.announce_and_sleep)
    before = f.actors

    async def main() -> None:
        task = asyncio.create_task(
            f.amap([[i, str(tmp_path), 300.0] for i in range(6)]))
        await _until(lambda: len(list(tmp_path.glob("running-*"))) == 2, "two calls running")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    with pytest.raises(RayActorError):  # the busy actors were killed, not left running
        ray.get([a._tc_identity.remote() for a in before], timeout=30)
    assert len(list(tmp_path.glob("running-*"))) == 2  # nothing else started
    assert asyncio.run(f.amap([[7, str(tmp_path), 0.0]])) == [7]  # new actors, same object
    assert f.actors != before


def test_leaving_aimap_early_stops_the_calls_in_flight(tmp_path: Path) -> None:
    f = chunked(chunk_size=1, batch_size=1)(w.wait_for)
    never = str(tmp_path / "never")
    [before] = f.actors

    async def main() -> list[int]:
        seen: list[int] = []
        async with aclosing(f.aimap([[0, str(tmp_path)], [1, never]])) as results:
            async for value in results:
                seen.append(value)
                break
        return seen

    assert asyncio.run(main()) == [0]
    with pytest.raises(RayActorError):
        ray.get(before._tc_identity.remote(), timeout=30)


def test_a_cancel_landing_as_a_result_arrives_still_cancels() -> None:
    """The CI failure of the many-sweeps change: a result woke the sweep in the loop turn its
    task was cancelled in, and the wake-up swallowed the cancel (Python 3.11's wait_for), so
    the cancelled sweep ran on to the end. Reproduced here without Ray's timing."""
    async def main() -> None:
        wake = AsyncWake()
        waiting = asyncio.ensure_future(wake.wait_async(30.0))
        await asyncio.sleep(0)  # the waiter is waiting
        wake.set()  # from Ray's thread: lands on the loop next turn
        await asyncio.sleep(0)  # the event is set; the waiter would wake next turn
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(main())


def test_amap_resumes_from_a_checkpoint_and_reuses_rows(tmp_path: Path) -> None:
    f = chunked(chunk_size=2)(w.count_and_square)
    marks = tmp_path / "marks"
    marks.mkdir()
    path = tmp_path / "run.ckpt"
    first = asyncio.run(f.amap([[i, str(marks)] for i in range(4)], path=path))
    again = asyncio.run(f.amap([[i, str(marks)] for i in range(6)], path=path))
    assert first == [0, 1, 4, 9] and again == [i * i for i in range(6)]
    assert w.executions(marks) == dict.fromkeys(range(6), 1)  # rows 0-3 reused, not rerun


def test_two_sweeps_at_once_on_one_loop_share_the_actors() -> None:
    f = chunked(chunk_size=2)(w.square)

    async def main() -> list[list[int]]:
        return list(await asyncio.gather(f.amap([[i] for i in range(10)]),
                                         f.amap([[i] for i in range(10, 20)])))

    low, high = asyncio.run(main())
    assert low == [i * i for i in range(10)] and high == [i * i for i in range(10, 20)]


def test_a_bad_argument_fails_at_the_call_not_at_the_first_result() -> None:
    f = chunked(chunk_size=2)(w.square)
    with pytest.raises(TypeError, match="parameters: expected an iterable"):
        f.aimap(5)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="on_error"):
        f.aimap([[1]], on_error="ignore")  # type: ignore[call-overload]


def test_another_functions_sweep_on_the_same_actors_is_refused_at_once_not_deadlocked(
        tmp_path: Path) -> None:
    f = chunked(chunk_size=1, batch_size=1)(w.wait_for)
    g = f.replace(w.square)  # shares f's actors
    never = str(tmp_path / "never")

    async def main() -> None:
        results = f.aimap([[0, str(tmp_path)], [1, never]])
        async with aclosing(results):
            assert await anext(results) == 0  # f's sweep is open on this loop
            with pytest.raises(RuntimeError, match="cannot switch these actors to 'square'"):
                await g.amap([[3]])
        assert await g.amap([[3]]) == [9]  # once f's sweep is closed

    asyncio.run(main())


def test_cancelled_while_the_rows_are_read_the_checkpoint_is_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are read and matched in a worker thread that a cancel cannot stop: the checkpoint
    that thread opens for a sweep that no longer exists must be closed, not leaked."""
    closed: list[str] = []
    close = Store.close

    def counting_close(self: Store) -> None:
        closed.append(self.path)
        close(self)

    monkeypatch.setattr(Store, "close", counting_close)
    reading, release = threading.Event(), threading.Event()

    def rows() -> Iterator[list[int]]:
        reading.set()
        release.wait(60)  # the worker thread holds here while the task is cancelled
        yield from ([i] for i in range(3))

    f = chunked(chunk_size=2)(w.square)
    path = tmp_path / "run.ckpt"

    async def main() -> None:
        task = asyncio.create_task(f.amap(rows(), path=path))
        await _until(reading.is_set, "the rows being read")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await _until(lambda: closed == [str(path)], "the checkpoint closed")

    asyncio.run(main())
    assert f.map([[i] for i in range(3)], path=path) == [0, 1, 4]  # file and pool still fine


def test_handing_out_many_reused_rows_gives_the_loop_turns(tmp_path: Path) -> None:
    f = chunked(chunk_size=2)(w.square)
    path = tmp_path / "run.ckpt"
    f.map([[i] for i in range(200)], path=path)

    async def main() -> tuple[list[int], int]:
        turns = 0
        done = False

        async def other_task() -> None:  # one step each time the loop runs it
            nonlocal turns
            while not done:
                await asyncio.sleep(0)
                turns += 1

        other = asyncio.create_task(other_task())
        await asyncio.sleep(0)
        before = turns
        got = [v async for v in f.aimap([[i] for i in range(200)], path=path)]
        done = True
        await other
        return got, turns - before

    got, turns = asyncio.run(main())
    assert got == [i * i for i in range(200)]
    assert f.stats.calls == 0  # every row reused
    assert turns >= 200 // 16 - 1  # the loop ran other tasks while they were handed out
