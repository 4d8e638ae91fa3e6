"""The scheduling loop every entry point ends in."""

from __future__ import annotations

import re
import time
import warnings
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

import ray
from ray.actor import ActorHandle
from ray.exceptions import OutOfMemoryError, RayActorError

from ._actor import Item, Outcome
from ._errors import ConcurrencyReducedWarning, ThreadChunksError, WorkerDiedError
from ._pool import Pool
from ._progress import Progress
from ._rows import annotate

_TARGET_BATCH_SECONDS = 0.05
"""Automatic batching aims for actor calls of about this long."""
_MAX_BATCH = 1024
_PIPELINE_BELOW_SECONDS = 0.5
"""Calls shorter than this get a second call queued on their actor, hiding the round trip."""
_MEMORY_KILL = re.compile(r"low on memory|out of memory|OUT_OF_MEMORY|memory usage threshold",
                          re.IGNORECASE)


class Store(Protocol):
    """Where finished calls are recorded (the checkpoint)."""

    def record(self, records: list[Outcome], actor: str) -> None: ...


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


@dataclass(frozen=True)
class Policy:
    """How failures are handled."""

    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    max_worker_deaths: int = 3
    timeout: float | None = None


class Batcher:
    """How many rows go into one actor call, and whether to queue a second call per actor.

    Fixed when the user says so; otherwise starts at 1 and grows (doubling) while a call's
    rows take much less than ``_TARGET_BATCH_SECONDS``, so tiny calls stop paying Ray's
    per-call overhead one by one, and shrinks at once when rows get slower.
    """

    def __init__(self, fixed: int | None, timeout: float | None) -> None:
        self.fixed = 1 if timeout is not None and fixed is None else fixed
        self.size = self.fixed or 1
        self.pipelined = False

    def observe(self, records: list[Outcome]) -> None:
        if not records:
            return
        took = records[-1].ended - records[0].started
        if took < _PIPELINE_BELOW_SECONDS:
            self.pipelined = True
        if self.fixed is None:
            per_row = max(took / len(records), 1e-7)
            ideal = max(1, min(_MAX_BATCH, int(_TARGET_BATCH_SECONDS / per_row)))
            self.size = min(ideal, self.size * 2)

    def reset(self) -> None:
        if self.fixed is None:
            self.size = 1


@dataclass
class _Call:
    slot: int
    actor: ActorHandle[Any]
    batch: list[Item]


def actor_label(slot: int) -> str:
    return f"actor-{slot}"


class _Run:
    """State of one run: which calls are in flight where, what waits to be run again."""

    def __init__(self, pool: Pool, source: Iterator[Item], ordered: bool,
                 batch_size: int | None, policy: Policy, stats: RunStats, name: str) -> None:
        self.pool = pool
        self.source = source
        self.ordered = ordered
        self.policy = policy
        self.stats = stats
        self.name = name
        self.batcher = Batcher(batch_size, policy.timeout)
        self.tokens: deque[int] = deque(range(pool.size))  # one per call an actor may hold
        self.retired: set[int] = set()
        self.lanes: list[deque[ray.ObjectRef[Any]]] = [deque() for _ in range(pool.size)]
        self.running_since: list[float] = [0.0] * pool.size
        self.inflight: dict[ray.ObjectRef[Any], _Call] = {}
        self.again: deque[Item] = deque()  # rows to run again, before new rows
        self.attempts: dict[int, int] = {}
        self.deaths: dict[int, int] = {}
        self.order: deque[int] = deque()  # first-submission order (ordered mode)
        self.early: dict[int, Outcome] = {}
        self.exhausted = False
        self.pipelining = False

    # -- sending -------------------------------------------------------------------------

    def take(self, n: int) -> list[Item]:
        batch: list[Item] = []
        while self.again and len(batch) < n:
            batch.append(self.again.popleft())
        if len(batch) < n and not self.exhausted:
            fresh = list(islice(self.source, n - len(batch)))
            if len(fresh) < n - len(batch):
                self.exhausted = True
            if self.ordered:
                self.order.extend(item.row for item in fresh)
            batch.extend(fresh)
        return batch

    def fill(self) -> None:
        if self.batcher.pipelined and not self.pipelining:
            self.pipelining = True  # a second token per actor: one call runs, one waits
            self.tokens.extend(s for s in range(self.pool.size) if s not in self.retired)
        while self.tokens and (self.again or not self.exhausted):
            slot = self.tokens.popleft()
            if slot in self.retired:
                continue
            batch = self.take(self.batcher.size)
            if not batch:
                self.tokens.appendleft(slot)
                return
            actor = self.pool.handle(slot)
            ref = actor._tc_run_batch.remote(batch)
            if not self.lanes[slot]:
                self.running_since[slot] = time.monotonic()
            self.lanes[slot].append(ref)
            self.inflight[ref] = _Call(slot, actor, batch)
        running = sum(1 for lane in self.lanes if lane)
        self.stats.peak_concurrency = max(self.stats.peak_concurrency, running)

    def release(self, ref: ray.ObjectRef[Any]) -> _Call:
        call = self.inflight.pop(ref)
        lane = self.lanes[call.slot]
        was_running = bool(lane) and lane[0] == ref
        lane.remove(ref)
        if was_running and lane:
            self.running_since[call.slot] = time.monotonic()
        self.tokens.append(call.slot)
        return call

    # -- waiting ----------------------------------------------------------------------------

    def wait(self) -> ray.ObjectRef[Any] | None:
        """The next finished call, or None when a running call has passed its timeout."""
        timeout = self.policy.timeout
        remaining = None
        if timeout is not None:
            now = time.monotonic()
            remaining = max(0.0, min(self.running_since[s] + timeout - now
                                     for s, lane in enumerate(self.lanes) if lane))
        ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=remaining)
        return ready[0] if ready else None

    def overdue(self) -> list[Outcome]:
        """Kill the actors whose running call passed the timeout; those rows fail."""
        assert self.policy.timeout is not None
        now = time.monotonic()
        failed: list[Outcome] = []
        for slot, lane in enumerate(self.lanes):
            if not lane or now - self.running_since[slot] < self.policy.timeout:
                continue
            running = lane[0]
            call = self.inflight[running]
            self.pool.discard(slot, call.actor)
            self.stats.worker_deaths += 1
            for ref in list(lane):
                queued = self.release(ref)
                if ref is not running:
                    self.again.extendleft(reversed(queued.batch))
            wall = time.time()
            timed_out: list[Outcome] = [
                Outcome(item.row, False, TimeoutError(
                    f"row {item.row} ran longer than timeout={self.policy.timeout}s; its actor "
                    "was killed and replaced"), wall - self.policy.timeout, wall, "")
                for item in call.batch]
            failed += self.settle(timed_out, call.batch)
        return failed

    # -- outcomes ---------------------------------------------------------------------------

    def settle(self, records: list[Outcome], batch: list[Item]) -> list[Outcome]:
        """The final records; failed rows with retries left go back into ``again``."""
        if all(record.ok for record in records):
            return records
        final: list[Outcome] = []
        for record, item in zip(records, batch, strict=True):
            if not record.ok:
                tried = self.attempts.get(record.row, 0) + 1
                self.attempts[record.row] = tried
                if tried <= self.policy.retries and isinstance(record.value,
                                                               self.policy.retry_on):
                    self.stats.retries += 1
                    self.again.append(item)
                    continue
                self.stats.failures += 1
                annotate(record.value, item, self.name, record.traceback)
            final.append(record)
        return final

    def died(self, ref: ray.ObjectRef[Any], exc: RayActorError | OutOfMemoryError
             ) -> list[Outcome]:
        """The actor of call ``ref`` died: replace it and run the rows it held again.

        All calls the dead actor held are settled at this first news of its death. Only the
        call it was running is charged; a row charged ``max_worker_deaths`` times fails with
        WorkerDiedError. Queued calls, and the rows of a batch, run again uncharged.
        """
        call = self.inflight[ref]
        lane = self.lanes[call.slot]
        mine = [r for r in lane if self.inflight[r].actor is call.actor]
        running = mine[0] if mine and lane[0] == mine[0] else None
        calls = {r: self.release(r) for r in mine}
        if getattr(exc, "actor_init_failed", False):
            raise ThreadChunksError(
                f"the actors could not start (creating the actor or loading {self.name!r} "
                f"on it failed): {exc}") from exc
        if not self.pool.owned:
            raise WorkerDiedError(
                f"an actor handed in by the user died and cannot be replaced: {exc}") from exc
        self.pool.discard(call.slot, call.actor)
        self.stats.worker_deaths += 1
        if isinstance(exc, OutOfMemoryError) or _MEMORY_KILL.search(str(exc)):
            self.shrink(call.slot)
        self.batcher.reset()
        innocent = [item for r, c in calls.items() if r != running or len(c.batch) > 1
                    for item in c.batch]
        self.stats.retries += len(innocent)
        self.again.extendleft(reversed(innocent))
        if running is None or len(calls[running].batch) > 1:
            return []
        item = calls[running].batch[0]
        index = item.row
        self.deaths[index] = self.deaths.get(index, 0) + 1
        if self.deaths[index] < self.policy.max_worker_deaths:
            self.stats.retries += 1
            self.again.appendleft(item)
            return []
        now = time.time()
        error = WorkerDiedError(
            f"row {index} killed its worker {self.deaths[index]} times (segfault, os._exit, "
            f"out of memory, or killed); last cause: {exc}", index=index,
            deaths=self.deaths[index])
        self.stats.failures += 1
        annotate(error, item, self.name, "")
        return [Outcome(index, False, error, now, now, "")]

    def shrink(self, slot: int) -> None:
        """A worker was killed for memory: one call fewer at once from now on (never 0)."""
        active = self.pool.size - len(self.retired)
        if active <= 1:
            return
        self.retired.add(slot)
        warnings.warn(
            f"a worker running {self.name!r} was killed for lack of memory; running "
            f"{active - 1} calls at once instead of {active} for the rest of this run",
            ConcurrencyReducedWarning, stacklevel=4)

    def releasable(self, final: list[Outcome]) -> list[Outcome]:
        """What can be handed out now: everything when unordered; in order, what is next in
        line (holding back only what arrived early)."""
        if not self.ordered:
            return final
        early, order = self.early, self.order
        for record in final:
            early[record.row] = record
        out: list[Outcome] = []
        while order and order[0] in early:
            out.append(early.pop(order.popleft()))
        return out

    def abort(self) -> None:
        """Stop every call in flight: kill our busy actors, cancel on the user's."""
        for ref, call in list(self.inflight.items()):
            if not self.pool.discard(call.slot, call.actor) and ray.is_initialized():
                ray.cancel(ref)
        self.inflight.clear()


def run(
    pool: Pool,
    source: Iterator[Item],
    *,
    ordered: bool,
    batch_size: int | None,
    progress: Progress,
    store: Store | None,
    policy: Policy,
    stats: RunStats,
    name: str,
) -> Generator[Outcome, None, None]:
    """Run every item on ``pool``, at most ``pool.size`` calls running at once.

    Blocks on ``ray.wait`` (never polls). Yields one record per item, in input order when
    ``ordered`` (holding back only what arrived early), else as they finish. Items are pulled
    from ``source`` only when an actor can take them. Closing the generator early kills the
    calls in flight (actors we own are replaced lazily).
    """
    state = _Run(pool, source, ordered, batch_size, policy, stats, name)
    started = time.perf_counter()

    def deliver(final: list[Outcome], slot: int | None) -> Iterator[Outcome]:
        if not final:
            return
        label = actor_label(slot) if slot is not None else ""
        if store is not None:
            store.record(final, label)
        progress.update(len(final))
        stats.calls += len(final)
        yield from state.releasable(final)

    try:
        state.fill()
        while state.inflight:
            ref = state.wait()
            if ref is None:  # a call passed its timeout
                final = state.overdue()
                state.fill()
                yield from deliver(final, None)
                continue
            try:
                records: list[Outcome] = ray.get(ref)
            except (RayActorError, OutOfMemoryError) as exc:  # the worker process died
                slot = state.inflight[ref].slot
                final = state.died(ref, exc)
                state.fill()
                yield from deliver(final, slot)
                continue
            call = state.release(ref)
            state.batcher.observe(records)
            final = state.settle(records, call.batch)
            state.fill()
            label = actor_label(call.slot)
            stats.busy_time[label] = stats.busy_time.get(label, 0.0) + sum(
                r.ended - r.started for r in records)
            yield from deliver(final, call.slot)
    finally:
        stats.wall_time = time.perf_counter() - started
        stats.final_concurrency = pool.size - len(state.retired)
        state.abort()
