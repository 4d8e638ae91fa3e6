"""Which rows of a run are sent to an actor and not finished: kept by the run's store as
spans of row numbers, written into the checkpoint's ``meta`` (key ``running``) as one small
value, so that another process reading the file (``thread-chunks inspect``) sees them.

One small value rather than a mark per row: a batch's rows are marked in one write of a few
bytes when it is sent (a transaction of its own: ~0.1 ms, where marking the rows in the
``run`` table rewrote its pages, ~0.5 ms for a batch of 1,000 rows), and unmarked in the
transaction that records their outcomes (at no extra commit).
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence

META_KEY = "running"


def spans(rows: Sequence[int]) -> list[tuple[int, int]]:
    """``(first, last)`` of each run of consecutive numbers in ``rows`` (one span for the
    usual batch: consecutive rows, ascending)."""
    if not rows:
        return []
    if _consecutive(rows):
        return [(rows[0], rows[-1])]
    found: list[tuple[int, int]] = []
    for row in sorted(set(rows)):
        if found and found[-1][1] == row - 1:
            found[-1] = (found[-1][0], row)
        else:
            found.append((row, row))
    return found


def _consecutive(rows: Sequence[int]) -> bool:
    """Whether ``rows`` are n, n + 1, n + 2, ... (compared in C)."""
    return rows[-1] - rows[0] == len(rows) - 1 and list(rows) == list(
        range(rows[0], rows[-1] + 1))


class InFlight:
    """The rows sent and not finished, as spans (first row -> last row)."""

    def __init__(self) -> None:
        self._spans: dict[int, int] = {}

    def sent(self, rows: Sequence[int]) -> None:
        for first, last in spans(rows):
            self._spans[first] = max(last, self._spans.get(first, last))

    def finished(self, rows: Sequence[int]) -> None:
        """Forget ``rows`` (their outcomes are recorded). The usual batch is one span sent
        as it is recorded: one lookup."""
        if not self._spans or not rows:
            return
        if self._spans.get(rows[0]) == rows[-1] and _consecutive(rows):
            del self._spans[rows[0]]
            return
        done = set(rows)
        low, high = min(done), max(done)
        for first, last in list(self._spans.items()):
            if last < low or first > high:
                continue
            del self._spans[first]
            kept = [row for row in range(first, last + 1) if row not in done]
            for start, end in spans(kept):
                self._spans[start] = max(end, self._spans.get(start, end))

    def clear(self) -> None:
        self._spans.clear()

    def blob(self) -> bytes:
        """The spans, as stored: pairs of 64-bit numbers, ascending."""
        return array("q", [n for span in sorted(self._spans.items()) for n in span]).tobytes()


class Running:
    """The rows a stored :meth:`InFlight.blob` names, to look rows up in."""

    def __init__(self, blob: object) -> None:
        numbers = array("q")
        if isinstance(blob, bytes) and len(blob) % 16 == 0:
            numbers.frombytes(blob)
        self._firsts = numbers[0::2].tolist()
        self._lasts = numbers[1::2].tolist()

    def __bool__(self) -> bool:
        return bool(self._firsts)

    def __len__(self) -> int:
        return sum(last - first + 1 for first, last in zip(self._firsts, self._lasts, strict=True))

    def __contains__(self, row: object) -> bool:
        if not isinstance(row, int):
            return False
        i = bisect_right(self._firsts, row) - 1
        return i >= 0 and row <= self._lasts[i]

    def rows(self) -> Iterable[int]:
        for first, last in zip(self._firsts, self._lasts, strict=True):
            yield from range(first, last + 1)
