"""Typing mistakes a user can make: mypy must report each one on its own line.

Each line that must be reported ends with ``# E: <error code>``; the test runs mypy on this
file and compares the reported lines and codes with these markers.
"""

from __future__ import annotations

from thread_chunks import chunked


@chunked(chunk_size=2)
def simulate(x: float, y: float) -> float:
    return x * y


def negate(x: int) -> int:
    return -x


def mistakes() -> None:
    simulate("a", 2.0)  # E: arg-type
    simulate(1.0)  # E: call-arg
    simulate(1.0, 2.0, 3.0)  # E: call-arg
    simulate(x=1.0, z=2.0)  # E: call-arg
    text: str = simulate(1.0, 2.0)  # E: assignment
    results: list[str] = simulate.map([[1.0, 2.0]])  # E: assignment
    simulate.map(5)  # E: call-overload
    simulate.map([[1.0]], chunk_size=3)  # E: call-overload
    simulate.map([[1.0]], on_error="ignore")  # E: call-overload
    simulate.imap([[1.0]], ordered="yes")  # E: call-overload
    simulate.no_such_method()  # E: attr-defined
    simulate.replace(negate)("a")  # E: arg-type
    chunked(chunksize=3)  # E: call-overload
    chunked(chunk_size="4")  # E: call-overload
    simulate.row("a", 2.0)  # E: arg-type
    simulate.row(1.0)  # E: call-arg
    simulate.map([simulate.row(1.0, 2.0), negate_rows.row(1)])  # E: list-item
    print(text, results)


negate_rows = chunked(negate)


async def async_mistakes() -> None:
    await simulate.amap([negate_rows.row(1)])  # E: list-item
    floats: list[str] = await simulate.amap([[1.0, 2.0]])  # E: assignment
    simulate.aimap([[1.0]], ordered="yes")  # E: call-overload
    print(floats)
