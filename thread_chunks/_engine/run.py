"""One sweep (:class:`Run`): its input and read-ahead, retries and suspects, ordered release,
its checkpoint, progress and statistics. It changes only through its own methods."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol

from .._actor import (
    OK,
    ROW,
    TRACEBACK,
    VALUE,
    Item,
    NodeMemory,
    Outcome,
    Replied,
    failed,
)
from .._errors import WorkerDiedError
from .._progress import Progress
from .._rows import Source, annotate
from .batching import Batcher
from .ordering import Ordering
from .wake import Wake

log = logging.getLogger("thread_chunks")

DEFAULT_MAX_BUFFERED_BYTES = 256 << 20
"""``max_buffered_bytes``' default: results held back for order, in bytes."""
_MARGIN_ACTORS = 32
"""The default read-ahead is what fills every actor and its queue (two calls of a batch
each), plus as much again up to this many actors' worth (unchanged from ``4 * actors *
batch`` up to 32 actors; bounded above it: 20,064 rows at 10,000 actors of one row a call)."""


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
    yet handed out, its outcomes to hand out. Driven by :func:`~.drive.run` or
    :func:`~.drive.arun`; the scheduler of its pool sends its calls and hands it their
    outcomes, through its methods only."""

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
        self.pool_size = 1
        """Actors of the pool (set when the run opens): the default read-ahead scales with
        it."""
        self.clock = time.perf_counter()
        self.batcher = Batcher(batch_size, policy.timeout)
        self.wake: Wake = Wake()
        self.retry_queue: deque[Item] = deque()  # rows to run again, before new rows
        self.attempts: dict[int, int] = {}
        self.deaths: dict[int, int] = {}
        self.suspects: set[int] = set()  # rows held by an actor that died: run alone
        self.memory_suspects: dict[int, int] = {}  # killed for memory -> bytes used then
        self.memory_kills: dict[int, int] = {}  # times each row was killed for memory
        self.ordering = Ordering() if ordered else None
        self.ready: deque[Outcome] = deque()  # to hand out
        self.error: BaseException | None = None  # fails the run when its driver sees it
        self.inflight_calls = 0
        self.inflight_rows = 0
        self.exhausted = False
        self.peeked: list[Item] = []  # a row read to see whether the input is over
        self.pulled = 0  # rows read from the input
        self.handed = 0  # outcomes handed out (yielded)

    # -- life ------------------------------------------------------------------------------

    def opened(self, pool_size: int) -> None:
        """The run starts on a pool of ``pool_size`` actors."""
        self.pool_size = pool_size

    def ended(self, final_concurrency: int) -> None:
        """The run ended: its last statistics."""
        self.stats.wall_time = time.perf_counter() - self.clock
        self.stats.final_concurrency = final_concurrency

    def to_hand_out(self) -> list[Outcome] | None:
        """The outcomes to hand out now ([] when none yet), None when the run is done.
        Raises what fails the run."""
        if self.ready:
            out = list(self.ready)
            self.ready.clear()
            return out
        if self.error is not None:
            raise self.error
        if self.idle():
            self.peek()
            if self.error is not None:
                raise self.error
        if self.done():
            return None
        return []

    def handed_out(self, n: int) -> None:
        """The driver handed ``n`` outcomes out."""
        self.handed += n

    def note_concurrency(self, busy: int) -> None:
        if busy > self.stats.peak_concurrency:
            self.stats.peak_concurrency = busy

    # -- input ----------------------------------------------------------------------------

    def bound(self) -> int:
        """Rows read from the input and not yet handed out, at most."""
        if self.policy.max_buffered:
            return self.policy.max_buffered
        batch = self.batcher.size
        fill = 2 * self.pool_size * batch
        return fill + min(fill, 2 * _MARGIN_ACTORS * batch)

    def room(self) -> int:
        """New rows that may be read now: within ``max_buffered`` rows and, ordered, within
        ``max_buffered_bytes`` of results held back or expected from the calls in flight
        (at least one row when nothing is outstanding, so a run always moves)."""
        outstanding = self.pulled - self.handed
        rows = self.bound() - outstanding
        limit, size = self.policy.max_buffered_bytes, self.batcher.row_bytes
        if self.ordering is None or limit is None or size == 0 or rows <= 0:
            return rows
        free = limit - self.ordering.held_bytes - self.inflight_rows * size
        return min(rows, max(free // size, 0 if outstanding else 1))

    def has_work(self) -> bool:
        """Whether this run could use an actor now."""
        if self.error is not None:
            return False
        return bool(self.retry_queue) or (not self.exhausted and self.room() > 0)

    def suspect_head(self) -> Item | None:
        """The next row to run, when it is a suspect (it runs alone on its actor)."""
        queue = self.retry_queue
        return queue[0] if queue and queue[0][ROW] in self.suspects else None

    def take(self, n: int) -> list[Item]:
        """Up to ``n`` rows to send: those to run again first, then new ones from the input
        (within :meth:`room`)."""
        batch: list[Item] = []
        while self.retry_queue and len(batch) < n:
            batch.append(self.retry_queue.popleft())
        want = min(n - len(batch), self.room())
        if want > 0 and not self.exhausted:
            fresh, self.peeked = self.peeked, []
            if len(fresh) < want:
                fresh.extend(self.read(want - len(fresh)))
            self.pulled += len(fresh)
            if self.ordering is not None and fresh:
                self.ordering.line_up(fresh)
            batch.extend(fresh)
        return batch

    def read(self, n: int) -> list[Item]:
        """Up to ``n`` rows from the input (fewer: it is over, and marked so)."""
        try:
            source = self.source
            fresh = source.take(n) if isinstance(source, Source) else list(islice(source, n))
        except Exception as exc:  # a bad row, or the user's generator raised
            self.fail(exc)
            fresh = []
        if len(fresh) < n:
            self.exhausted = True
        return fresh

    def idle(self) -> bool:
        """Whether every row read so far was run and handed over while the input may hold
        more: the run is over only if the input is."""
        return not self.exhausted and not self.peeked and not self.retry_queue \
            and not self.inflight_calls and not self.ready and self.error is None

    def peek(self) -> None:
        """See whether the input is over by reading its next row, held for the next call:
        a run learns its end without an actor free to take a row (none may be placed)."""
        self.peeked = self.read(1)

    def take_suspect(self) -> list[Item]:
        """The suspect row at the head of the retry queue, alone."""
        return [self.retry_queue.popleft()]

    def done(self) -> bool:
        """Nothing left: every row read, run and handed over."""
        return self.exhausted and not self.retry_queue and not self.inflight_calls \
            and not self.ready

    # -- calls -----------------------------------------------------------------------------

    def sending(self, batch: list[Item]) -> None:
        """A call of ``batch`` is sent."""
        if self.store is not None:
            self.store.sending([item[ROW] for item in batch])
        self.inflight_calls += 1
        self.inflight_rows += len(batch)

    def returned(self, batch: list[Item]) -> None:
        """The call of ``batch`` is over (replied, died or dropped)."""
        self.inflight_calls -= 1
        self.inflight_rows -= len(batch)

    def again(self, batch: list[Item]) -> None:
        """The rows of a call that never ran (queued behind one that timed out) go first,
        uncharged."""
        self.retry_queue.extendleft(reversed(batch))

    def replied(self, reply: Replied, batch: list[Item], label: str) -> None:
        """A call of ``batch`` on actor ``label`` replied: its peak, the batch size learned
        from it, its rows' outcomes (retried or final)."""
        records = reply.outcomes
        stats = self.stats
        if records and (stats.peak_call_memory is None or reply.peak > stats.peak_call_memory):
            stats.peak_call_memory = reply.peak
        self.batcher.observe(reply, self.pool_size)
        final = self.apply_retries(records, batch, reply.ok)
        busy_time = stats.busy_time
        busy_time[label] = busy_time.get(label, 0.0) + reply.busy
        self.deliver(final, label, reply.size if final is records else None)

    def timed_out(self, batch: list[Item], timeout: float, wall: float, killed: bool = True
                  ) -> None:
        """The call of ``batch`` ran longer than ``timeout``: its rows fail (or run again,
        with retries left). ``killed``: its actor was killed and replaced (ours); else the
        actor was handed in by the user and the call is left to finish, its result dropped.
        """
        if killed:
            self.stats.worker_deaths += 1
        what = ("its actor was killed and replaced" if killed else
                "its actor, handed in by the user, is not killed: the call is left to "
                "finish, its result dropped, and that actor gets no new call until it ends")
        records: list[Outcome] = [
            failed(item[ROW], TimeoutError(
                f"row {item[ROW]} ran longer than timeout={timeout}s; {what}"),
                wall - timeout, wall)
            for item in batch]
        self.deliver(self.apply_retries(records, batch), "")

    # -- outcomes --------------------------------------------------------------------------

    def apply_retries(self, records: list[Outcome], batch: list[Item], ok: bool = False
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
        self.ready.extend(final if self.ordering is None else
                          self.ordering.releasable(final, size))
        self.wake.set()

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
