"""How a typed codebase sees thread-chunks: every assert_type here must hold under mypy."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing
from typing import Any

from typing_extensions import assert_type

from thread_chunks import Checkpoint, Chunked, Chunker, LabelledActor, RunStats, chunk, chunked


@chunked(chunk_size=4)
def simulate(x: float, y: float) -> float:
    return x * y


@chunked
def label(name: str, *, upper: bool = False) -> str:
    return name.upper() if upper else name


def negate(x: int) -> int:
    return -x


class Warm(LabelledActor):
    pass


def check() -> None:
    # Chunked is generic over the function itself: parameter names and kinds are kept
    kept: Chunked[Callable[[float, float], float]] = simulate
    assert_type(simulate(1.0, 2.0), float)
    assert_type(simulate(x=1.0, y=2.0), float)  # keywords keep their names
    assert_type(label("a", upper=True), str)
    assert_type(simulate.map([[1.0, 2.0], (3.0, 4.0), {"x": 1.0, "y": 2.0}]), list[float])
    assert_type(simulate.map([[1.0, 2.0]], path="run.ckpt", progress_bar=False), list[float])
    assert_type(simulate.map([[1.0, 2.0]], on_error="return"), list[float | Exception])
    assert_type(simulate.imap([[1.0, 2.0]]), Iterator[float])
    assert_type(simulate.imap([[1.0, 2.0]], ordered=False), Iterator[float])
    assert_type(simulate.imap([[1.0, 2.0]], on_error="return"), Iterator[float | Exception])
    replaced = simulate.replace(negate)
    as_int: Chunked[Callable[[int], int]] = replaced
    assert_type(replaced(3), int)
    assert_type(replaced.map([[3]]), list[int])
    assert_type(simulate.chunker, Chunker)
    assert_type(simulate.chunk_size, int)
    assert_type(simulate.stats, RunStats)
    assert_type(simulate.__name__, str)
    with simulate as same:
        assert_type(same(1.0, 2.0), float)
    assert_type(chunked(negate)(1), int)
    assert_type(chunked(chunk_size=2, actor_cls=Warm)(negate).map([[1]]), list[int])
    print(kept, as_int)
    assert_type(chunk(negate, [[1]]), list[Any])
    assert_type(Chunker(negate)([[1]]), list[Any])
    assert_type(Checkpoint.load("run.ckpt").output, list[Any])


async def check_rows_and_async() -> None:
    # typed rows: checked against the signature like calls, in any iterable, mixed with plain
    assert_type(simulate.map([simulate.row(1.0, 2.0), simulate.row(x=1.0, y=2.0)]), list[float])
    assert_type(simulate.map(simulate.row(x, 2.0) for x in (1.0, 2.0)), list[float])
    assert_type(simulate.map([simulate.row(1.0, 2.0), [3.0, 4.0]]), list[float])
    assert_type(simulate.imap([simulate.row(1.0, y=2.0)], ordered=False), Iterator[float])
    assert_type(label.map([label.row("a", upper=True), label.row("b")]), list[str])
    assert_type(chunked(negate).map([chunked(negate).row(1)]), list[int])
    # async maps: the same results, awaited
    assert_type(await simulate.amap([simulate.row(1.0, 2.0)]), list[float])
    assert_type(await simulate.amap([[1.0, 2.0]], path="run.ckpt"), list[float])
    assert_type(await simulate.amap([[1.0, 2.0]], on_error="return"), list[float | Exception])
    assert_type(simulate.aimap([simulate.row(1.0, 2.0)]), AsyncGenerator[float, None])
    assert_type(simulate.aimap([[1.0, 2.0]], on_error="return"),
                AsyncGenerator[float | Exception, None])
    async for value in simulate.aimap([simulate.row(1.0, 2.0)], ordered=False):
        assert_type(value, float)
    async with aclosing(simulate.aimap([[1.0, 2.0]])) as results:
        async for value in results:
            assert_type(value, float)
