"""One sweep (:class:`Run`): its input and read-ahead, retries and suspects, ordered release,
its checkpoint, progress and statistics. It changes only through its own methods."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Protocol

from .._actor import (
    OK,
    ROW,
    TRACEBACK,
    VALUE,
    Item,
    NodeMemory,
    Outcome,
    consecutive,
    failed,
    weight,
)
from .._errors import WorkerDiedError
from .._progress import Progress
from .._rows import Source, annotate
from .._wire import Wire
from .batching import Batcher
from .wake import Wake

log = logging.getLogger("thread_chunks")

DEFAULT_MAX_BUFFERED_BYTES = 256 << 20
"""``max_buffered_bytes``' default: results held back for order, in bytes."""


class Store(Protocol):
    """Where finished calls are recorded (the checkpoint)."""

    def record(self, records: list[Outcome], actor: str) -> None: ...

    def sending(self, rows: Sequence[int]) -> None: ...


@dataclass
class RunStats:
    """What the last run did."""

    calls: int = 0
    """Calls finished in this run (successes and failures; resumed ones not counted)."""
    failures: int = 0
    """Calls that ended in an exception after their retries."""
    retries: int = 0
    """Calls run again: after an exception (``retries=``), a timeout or a dead worker."""
    worker_deaths: int = 0
    """Worker processes that died (or were killed for a timeout) and were replaced."""
    peak_concurrency: int = 0
    """Most calls running at once (never above ``chunk_size``)."""
    final_concurrency: int = 0
    """Actors still in use at the end (lower than ``chunk_size`` after memory kills)."""
    wall_time: float = 0.0
    """Seconds from the first call sent to the last result received."""
    busy_time: dict[str, float] = field(default_factory=dict)
    """Seconds each actor spent inside the user's function."""
    peak_call_memory: int | None = None
    """Bytes the largest call of this run used at its peak (its worker's resident memory
    above what it was when the call started); None when no call was measured."""


@dataclass(frozen=True)
class Policy:
    """How failures and waits are handled."""

    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    max_worker_deaths: int = 3
    timeout: float | None = None
    placement_timeout: float | None = 600.0
    max_buffered: int | None = None
    max_buffered_bytes: int | None = DEFAULT_MAX_BUFFERED_BYTES
    memory_budget: int | str | None = "auto"


class Run:
    """One sweep: its rows, what waits to run again, what was read from the input but not
    yet handed out, its outcomes ready to hand out. Driven by :func:`run` or :func:`arun`;
    the dispatcher of its pool sends its calls and hands it their outcomes."""

    pool_size = 1
    """Actors of the pool (set when the run opens): the default read-ahead scales with it."""

    def __init__(self, source: Iterator[Item], *, ordered: bool, batch_size: int | None,
                 progress: Progress, store: Store | None, policy: Policy, stats: RunStats,
                 name: str, on_end: Callable[[RunStats], None] | None = None) -> None:
        self.source = source
        self.ordered = ordered
        self.policy = policy
        self.stats = stats
        self.name = name
        self.progress = progress
        self.store = store
        self.on_end = on_end
        self.clock = time.perf_counter()
        self.wire = Wire()
        self.batcher = Batcher(batch_size, policy.timeout)
        self.wake: Wake = Wake()
        self.retry_queue: deque[Item] = deque()  # rows to run again, before new rows
        self.attempts: dict[int, int] = {}
        self.deaths: dict[int, int] = {}
        self.suspects: set[int] = set()  # rows held by an actor that died: run alone
        self.memory_suspects: dict[int, int] = {}  # killed for memory -> bytes used then
        self.memory_kills: dict[int, int] = {}  # times each row was killed for memory
        self.order: deque[list[int]] = deque()
        """Ordered mode: the rows read and not yet handed out, as spans [start, stop),
        ascending (rows reused from a checkpoint are not read: they leave gaps)."""
        self.held_back: dict[int, tuple[list[Outcome], int]] = {}
        """Finished early, waiting for their turn: consecutive rows by the first of them,
        and the bytes of their pickled results."""
        self.held_bytes = 0  # pickled results in ``held_back``
        self.ready: deque[Outcome] = deque()  # to hand out
        self.error: BaseException | None = None  # fails the run when its driver sees it
        self.inflight_calls = 0
        self.inflight_rows = 0
        self.exhausted = False
        self.pulled = 0  # rows read from the input
        self.handed = 0  # outcomes handed out (yielded)

    # -- input ----------------------------------------------------------------------------

    def bound(self) -> int:
        """Rows read from the input and not yet handed out, at most."""
        return self.policy.max_buffered or 4 * self.pool_size * self.batcher.size

    def room(self) -> int:
        """New rows that may be read now: within ``max_buffered`` rows and, ordered, within
        ``max_buffered_bytes`` of results held back or expected from the calls in flight
        (at least one row when nothing is outstanding, so a run always moves)."""
        outstanding = self.pulled - self.handed
        rows = self.bound() - outstanding
        limit, size = self.policy.max_buffered_bytes, self.batcher.row_bytes
        if not self.ordered or limit is None or size == 0 or rows <= 0:
            return rows
        free = limit - self.held_bytes - self.inflight_rows * size
        return min(rows, max(free // size, 0 if outstanding else 1))

    def has_work(self) -> bool:
        """Whether this run could use an actor now."""
        if self.error is not None:
            return False
        return bool(self.retry_queue) or (not self.exhausted and self.room() > 0)

    def take(self, n: int) -> list[Item]:
        batch: list[Item] = []
        while self.retry_queue and len(batch) < n:
            batch.append(self.retry_queue.popleft())
        want = min(n - len(batch), self.room())
        if want > 0 and not self.exhausted:
            try:
                source = self.source
                fresh = source.take(want) if isinstance(source, Source) else \
                    list(islice(source, want))
            except Exception as exc:  # a bad row, or the user's generator raised
                self.exhausted = True
                self.fail(exc)
                fresh = []
            self.pulled += len(fresh)
            if len(fresh) < want:
                self.exhausted = True
            if self.ordered and fresh:
                self.line_up(fresh)
            batch.extend(fresh)
        return batch

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

    def done(self) -> bool:
        """Nothing left: every row read, run and handed over."""
        return self.exhausted and not self.retry_queue and not self.inflight_calls \
            and not self.ready

    # -- outcomes --------------------------------------------------------------------------

    def settle(self, records: list[Outcome], batch: list[Item], ok: bool = False
               ) -> list[Outcome]:
        """The final outcomes; failed rows with retries left go back into the retry queue.
        ``ok``: every row is known to have succeeded."""
        if self.suspects:
            self.suspects.difference_update(item[ROW] for item in batch)
            for item in batch:
                self.memory_suspects.pop(item[ROW], None)
        if ok or all(record[OK] for record in records):
            return records
        final: list[Outcome] = []
        for record, item in zip(records, batch, strict=True):
            if not record[OK]:
                tried = self.attempts.get(record[ROW], 0) + 1
                self.attempts[record[ROW]] = tried
                if tried <= self.policy.retries and isinstance(record[VALUE],
                                                               self.policy.retry_on):
                    self.stats.retries += 1
                    self.retry_queue.append(item)
                    continue
                self.stats.failures += 1
                annotate(record[VALUE], item, self.name, record[TRACEBACK])
            final.append(record)
        return final

    def deliver(self, final: list[Outcome], actor: str, size: int | None = None) -> None:
        """Record final outcomes (checkpoint, progress, stats); queue those to hand out.
        ``size``: the bytes of their pickled results, when known."""
        if not final:
            return
        if self.store is not None:
            self.store.record(final, actor)
        self.progress.update(len(final))
        self.stats.calls += len(final)
        self.ready.extend(self.releasable(final, size))
        self.wake.set()

    def releasable(self, final: list[Outcome], size: int | None = None) -> list[Outcome]:
        """What can be handed out now: everything when unordered; in order, what is next in
        line (holding back only what arrived early). A batch of consecutive rows, the usual
        one, is held and released whole: O(1) Python however many rows it has."""
        if not self.ordered:
            return final
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

    def charge_death(self, held: list[Item], exc: BaseException, alone: bool) -> None:
        """Rows of this run held by an actor that died. ``alone``: they were the only rows
        on it (one call of one row), so that row is charged; otherwise none is, and each
        runs again alone on its actor, where a death names its row."""
        self.stats.worker_deaths += 1
        self.batcher.reset()
        self.wake.set()
        if not alone:
            self.suspects.update(item[ROW] for item in held)
            self.stats.retries += len(held)
            self.retry_queue.extendleft(reversed(held))
            return
        item = held[0]
        index = item[ROW]
        self.deaths[index] = self.deaths.get(index, 0) + 1
        if self.deaths[index] < self.policy.max_worker_deaths:
            self.stats.retries += 1
            self.suspects.add(index)
            self.retry_queue.appendleft(item)
            return
        now = time.time()
        error = WorkerDiedError(
            f"row {index} killed its worker {self.deaths[index]} times (segfault, os._exit, "
            f"out of memory, or killed); last cause: {exc}", index=index,
            deaths=self.deaths[index])
        self.stats.failures += 1
        self.suspects.discard(index)
        annotate(error, item, self.name, "")
        self.deliver([failed(index, error, now, now)], "")

    def resend(self, held: list[Item]) -> None:
        """Rows of this run on a worker Ray killed for memory it barely used: killed beside
        the worker that used it (Ray kills several at once, idle ones too). They run again,
        not charged and not suspected."""
        self.stats.worker_deaths += 1
        self.retry_queue.extendleft(reversed(held))
        self.wake.set()

    def killed_for_memory(self, held: list[Item], used: int) -> None:
        """Rows of this run on a worker Ray killed for memory (it used ``used`` bytes, 0 when
        unknown): each runs again alone on its node, where the rest of the node's budget is
        its own. Not charged as a death of the row: the node was short, not the row wrong."""
        self.stats.worker_deaths += 1
        self.stats.retries += len(held)
        self.batcher.reset()
        for item in held:
            self.suspects.add(item[ROW])
            self.memory_suspects[item[ROW]] = max(used, self.memory_suspects.get(item[ROW], 0))
            self.memory_kills[item[ROW]] = self.memory_kills.get(item[ROW], 0) + 1
        log.warning("Ray killed a worker of %r for memory (it used %s): row%s %s run%s again "
                    "alone on its node", self.name,
                    f"{used / 2**30:.2f} GiB" if used else "an unknown amount",
                    "s" if len(held) > 1 else "", ", ".join(str(i[ROW]) for i in held),
                    "" if len(held) > 1 else "s")
        self.retry_queue.extendleft(reversed(held))
        self.wake.set()

    def too_large(self, item: Item, used: int, budget: int, node: NodeMemory | None) -> None:
        """Row ``item`` was killed for memory while running alone on its node, using more
        than the node's ``budget`` for calls: it fails."""
        self.stats.worker_deaths += 1
        self.stats.failures += 1
        used = max(used, self.memory_suspects.pop(item[ROW], 0))
        self.suspects.discard(item[ROW])
        needed = f"it used {used / 2**30:.2f} GiB when killed" if used else \
            "its use when killed is unknown"
        if node is None:
            has = "the node's memory is unknown"
        else:
            has = (f"the node has {node.total / 2**30:.2f} GiB, Ray's memory monitor kills "
                   f"above {node.threshold:.0%} of it ({node.threshold * node.total / 2**30:.2f}"
                   f" GiB), {node.used / 2**30:.2f} GiB were in use outside the calls: "
                   f"{budget / 2**30:.2f} GiB for calls")
        error = WorkerDiedError(
            f"row {item[ROW]} needs more memory than its node can give even to it alone: Ray "
            f"killed it for memory while it ran alone ({needed}; {has}; killed "
            f"{self.memory_kills.get(item[ROW], 0) + 1} times). Free memory on the "
            "node, run it on a larger node, or split the row", index=item[ROW],
            deaths=self.memory_kills.get(item[ROW], 0) + 1)
        annotate(error, item, self.name, "")
        now = time.time()
        self.deliver([failed(item[ROW], error, now, now)], "")

    def fail(self, error: BaseException) -> None:
        """The run cannot go on: its driver raises ``error``."""
        if self.error is None:
            self.error = error
        self.wake.set()
