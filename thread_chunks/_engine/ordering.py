"""Ordered release: the rows read and not yet handed out (as spans), and the outcomes that
finished early, held back until their turn, with the bytes of their results."""

from __future__ import annotations

from collections import deque
from itertools import chain

from .._actor import OK, ROW, VALUE, Item, Outcome, consecutive, weight


class Ordering:
    """Where outcomes wait for their turn in input order."""

    def __init__(self) -> None:
        self.order: deque[list[int]] = deque()
        """The rows read and not yet handed out, as spans [start, stop), ascending (rows
        reused from a checkpoint are not read: they leave gaps)."""
        self.held_back: dict[int, tuple[list[Outcome], int]] = {}
        """Finished early, waiting for their turn: consecutive rows by the first of them,
        and the bytes of their pickled results."""
        self.held_bytes = 0
        """Pickled results in ``held_back``."""

    def line_up(self, fresh: list[Item]) -> None:
        """Rows just read join the line to be handed out in order."""
        first, last, order = fresh[0][ROW], fresh[-1][ROW], self.order
        if last - first == len(fresh) - 1:  # consecutive (rows are read in ascending order)
            spans = [(first, last + 1)]
        else:
            spans = [(item[ROW], item[ROW] + 1) for item in fresh]
        for start, stop in spans:
            if order and order[-1][1] == start:
                order[-1][1] = stop
            else:
                order.append([start, stop])

    def releasable(self, final: list[Outcome], size: int | None = None) -> list[Outcome]:
        """What can be handed out now, in order: what is next in line (holding back only
        what arrived early). A batch of consecutive rows, the usual one, is held and released
        whole: O(1) Python however many rows it has. ``size``: the bytes of their pickled
        results, when known."""
        held, order = self.held_back, self.order
        if consecutive(final):
            if size is None:
                size = sum(weight(r[VALUE]) for r in final if r[OK])
            self.hold(final[0][ROW], final, size)
        else:
            for record in final:
                self.hold(record[ROW], [record], weight(record[VALUE]) if record[OK] else 0)
        parts: list[list[Outcome]] = []
        while order:
            span = order[0]
            found = held.pop(span[0], None)
            if found is None:
                break
            rows, nbytes = found
            self.held_bytes -= nbytes
            parts.append(rows)
            if len(rows) > 1 and held:  # a row of these reported again on its own: drop it
                for row in [r for r in held if span[0] < r < span[0] + len(rows)]:
                    self.held_bytes -= held.pop(row)[1]
            span[0] += len(rows)
            if span[0] >= span[1]:
                order.popleft()
        if not parts:
            return []
        return parts[0] if len(parts) == 1 else list(chain.from_iterable(parts))

    def hold(self, first: int, rows: list[Outcome], size: int) -> None:
        """Hold back consecutive ``rows`` from ``first`` (``size`` bytes of results) until
        it is their turn. A row reported again replaces its first report (rows held from
        the same first row beyond the new ones are kept)."""
        replaced = self.held_back.get(first)
        if replaced is not None:
            self.held_bytes -= replaced[1]
            beyond = replaced[0][len(rows):]
            if beyond:
                rows = rows + beyond
                size += sum(weight(r[VALUE]) for r in beyond if r[OK])
        self.held_back[first] = (rows, size)
        self.held_bytes += size
