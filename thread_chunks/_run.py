"""The scheduling loop every entry point ends in."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import warnings
from collections import deque
from collections.abc import AsyncGenerator, Generator, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

import ray
from ray.actor import ActorHandle
from ray.exceptions import OutOfMemoryError, RayActorError, RayError

from ._actor import Item, Outcome, read_reply, weight
from ._errors import (
    ActorPlacementError,
    ConcurrencyReducedWarning,
    ThreadChunksError,
    WorkerDiedError,
)
from ._pool import Pool
from ._progress import Progress
from ._rows import annotate
from ._wire import Wire

log = logging.getLogger("thread_chunks")

_TARGET_BATCH_SECONDS = 0.05
"""Automatic batching aims for actor calls of about this long."""
_TARGET_BATCH_BYTES = 4 << 20
"""... and for replies of at most about this many bytes of results (one larger result is
one row a call)."""
_MAX_BATCH = 1024
DEFAULT_MAX_BUFFERED_BYTES = 256 << 20
"""``max_buffered_bytes``' default: results held back for order, in bytes."""
_PIPELINE_BELOW_SECONDS = 0.1
"""Calls shorter than this get a second call queued on their actor, hiding the round trip
(about a millisecond: 1 % of such a call at most). Longer calls are not queued: a crash of the
driver then loses at most ``chunk_size`` calls (a queued call may still start on its actor
before Ray stops it), and a retry or timeout never waits behind a queued call."""
_PLACEMENT_NOTICE_SECONDS = 10.0
"""An actor Ray has not placed after this long is reported: a ConcurrencyReducedWarning while
others run, a log line and a progress-bar note while none does."""
_START_FAILURES = 3
"""An actor slot whose new actors die this many times in a row before starting fails the run."""
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
    """How failures and waits are handled."""

    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    max_worker_deaths: int = 3
    timeout: float | None = None
    placement_timeout: float | None = 600.0
    max_buffered: int | None = None
    max_buffered_bytes: int | None = DEFAULT_MAX_BUFFERED_BYTES


class Batcher:
    """How many rows go into one actor call, and whether to queue a second call per actor.

    Fixed when the user says so; otherwise starts at 1 and grows (doubling) while a call's
    rows take much less than ``_TARGET_BATCH_SECONDS`` and its results weigh much less than
    ``_TARGET_BATCH_BYTES``, so tiny calls stop paying Ray's per-call overhead one by one,
    and shrinks at once when rows get slower or their results bigger.

    It also keeps ``row_bytes``, the size of a result as recently seen (the larger of the
    last batch's mean and half the previous estimate): what a call in flight is expected to
    bring back.
    """

    def __init__(self, fixed: int | None, timeout: float | None) -> None:
        self.fixed = 1 if timeout is not None and fixed is None else fixed
        self.size = self.fixed or 1
        self.pipelined = False
        self.row_bytes = 0

    def observe(self, records: list[Outcome]) -> None:
        if not records:
            return
        took = records[-1].ended - records[0].started
        if took < _PIPELINE_BELOW_SECONDS:
            self.pipelined = True
        size = sum(weight(r.value) for r in records if r.ok)
        self.row_bytes = max(size // len(records), self.row_bytes // 2)
        if self.fixed is None:
            per_row = max(took / len(records), 1e-7)
            ideal = min(_MAX_BATCH, int(_TARGET_BATCH_SECONDS / per_row),
                        _TARGET_BATCH_BYTES // max(self.row_bytes, 1))
            self.size = max(1, min(ideal, self.size * 2))

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


def _amounts(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items()
             if not k.startswith("node:") and k != "object_store_memory"}
    return ", ".join(f"{k}={v / 2**30:.3g} GiB" if k == "memory" else f"{k}={v:g}"
                     for k, v in sorted(shown.items())) or "nothing"


class Scheduler:
    """One run: which actors are ready, which calls are in flight where, what waits
    to be run again, what was read from the input but not yet handed out."""

    def __init__(self, pool: Pool, source: Iterator[Item], *, ordered: bool,
                 batch_size: int | None, progress: Progress, store: Store | None,
                 policy: Policy, stats: RunStats, name: str) -> None:
        self.pool = pool
        self.store = store
        self.clock = time.perf_counter()
        self.source = source
        self.ordered = ordered
        self.policy = policy
        self.stats = stats
        self.name = name
        self.progress = progress
        self.wire = Wire()
        self.batcher = Batcher(batch_size, policy.timeout)
        self.tokens: deque[int] = deque()  # one per call an actor may take (checked lazily)
        self.retired: set[int] = set()
        self.ready: dict[int, ActorHandle[Any]] = {}  # slot -> its started actor
        self.probes: dict[ray.ObjectRef[Any], tuple[int, ActorHandle[Any]]] = {}
        self.waiting_since: dict[int, float] = {}  # slot -> when its actor was asked for
        self.stalled_since: float | None = time.monotonic()  # no actor ready since then
        self.start_failures: dict[int, int] = {}
        self.warned_reduced = False
        self.logged_waiting = False
        self.lanes: list[deque[ray.ObjectRef[Any]]] = [deque() for _ in range(pool.size)]
        self.running_since: list[float] = [0.0] * pool.size
        self.inflight: dict[ray.ObjectRef[Any], _Call] = {}
        self.again: deque[Item] = deque()  # rows to run again, before new rows
        self.attempts: dict[int, int] = {}
        self.deaths: dict[int, int] = {}
        self.suspects: set[int] = set()  # rows held by an actor that died: run alone
        self.alone: set[int] = set()  # slots running a suspect, nothing queued behind it
        self.order: deque[int] = deque()  # rows read and not yet handed out (ordered mode)
        self.early: dict[int, Outcome] = {}
        self.early_bytes = 0  # pickled results in ``early``
        self.inflight_rows = 0
        self.exhausted = False
        self.pipelining = False
        self.pulled = 0  # rows read from the input
        self.handed = 0  # outcomes handed out (yielded)
        for slot in range(pool.size):
            self.enlist(slot)

    # -- actors ------------------------------------------------------------------------------

    def capacity(self) -> int:
        """Calls one actor may hold: the running one, and one queued behind short calls."""
        return 2 if self.pipelining else 1

    def enlist(self, slot: int) -> None:
        """Use ``slot``'s actor (made now if needed) as soon as it is ready: at once when it
        is known to be, else when its probe resolves. Rows never wait on an unready actor."""
        actor, probe = self.pool.probe(slot)
        if probe is None:
            self.mark_ready(slot, actor)
        else:
            self.probes[probe] = (slot, actor)
            self.waiting_since.setdefault(slot, time.monotonic())

    def mark_ready(self, slot: int, actor: ActorHandle[Any]) -> None:
        self.ready[slot] = actor
        if self.waiting_since.pop(slot, None) is not None and self.warned_reduced:
            log.info("an actor for %r was placed: %d calls at once", self.name,
                     len(self.ready) - len(self.retired & self.ready.keys()))
        if self.logged_waiting:
            self.logged_waiting = False
            self.progress.note("")
        self.stalled_since = None
        self.start_failures.pop(slot, None)
        self.tokens.extend([slot] * self.capacity())

    def lost(self, slot: int, actor: ActorHandle[Any]) -> None:
        """``slot``'s actor is gone (discarded by us or dead): ask for a new one."""
        self.pool.discard(slot, actor)
        if self.ready.get(slot) is actor:
            del self.ready[slot]
        if not self.ready.keys() - self.retired and self.stalled_since is None:
            self.stalled_since = time.monotonic()
        if slot not in self.retired:
            self.enlist(slot)

    def started(self, probe: ray.ObjectRef[Any]) -> None:
        """A probe resolved: its actor is ready, or it could not start."""
        slot, actor = self.probes.pop(probe)
        try:
            ray.get(probe)
        except RayActorError as exc:
            if getattr(exc, "actor_init_failed", False):
                raise ThreadChunksError(
                    f"the actors could not start (creating the actor or loading "
                    f"{self.name!r} on it failed): {exc}") from exc
            if not self.pool.owned:
                raise WorkerDiedError(
                    f"an actor handed in by the user died and cannot be replaced: {exc}"
                ) from exc
            failures = self.start_failures[slot] = self.start_failures.get(slot, 0) + 1
            if failures >= _START_FAILURES:
                raise ThreadChunksError(
                    f"actors for {self.name!r} died {failures} times in a row before "
                    f"starting; last cause: {exc}") from exc
            self.lost(slot, actor)
            return
        except RayError as exc:
            raise ThreadChunksError(
                f"the actors could not load {self.name!r}: {exc}") from exc
        if self.pool.confirm(slot, actor):
            self.mark_ready(slot, actor)
        elif slot not in self.ready and slot not in self.retired:
            self.enlist(slot)  # replaced meanwhile: wait for the new one

    # -- sending -----------------------------------------------------------------------------

    def bound(self) -> int:
        """Rows read from the input and not yet handed out, at most."""
        return self.policy.max_buffered or 4 * self.pool.size * self.batcher.size

    def room(self) -> int:
        """New rows that may be read now: within ``max_buffered`` rows and, ordered, within
        ``max_buffered_bytes`` of results held back or expected from the calls in flight
        (at least one row when nothing is outstanding, so a run always moves)."""
        outstanding = self.pulled - self.handed
        rows = self.bound() - outstanding
        limit, weight = self.policy.max_buffered_bytes, self.batcher.row_bytes
        if not self.ordered or limit is None or weight == 0 or rows <= 0:
            return rows
        free = limit - self.early_bytes - self.inflight_rows * weight
        return min(rows, max(free // weight, 0 if outstanding else 1))

    def take(self, n: int) -> list[Item]:
        batch: list[Item] = []
        while self.again and len(batch) < n:
            batch.append(self.again.popleft())
        want = min(n - len(batch), self.room())
        if want > 0 and not self.exhausted:
            fresh = list(islice(self.source, want))
            self.pulled += len(fresh)
            if len(fresh) < want:
                self.exhausted = True
            if self.ordered:
                self.order.extend(item.row for item in fresh)
            batch.extend(fresh)
        return batch

    def has_work(self) -> bool:
        return bool(self.again) or not self.exhausted

    def fill(self) -> None:
        if self.batcher.pipelined and not self.pipelining:
            self.pipelining = True  # a second token per actor: one call runs, one waits
            self.tokens.extend(s for s in self.ready if s not in self.retired)
        capacity = self.capacity()
        while self.tokens and self.has_work():
            slot = self.tokens.popleft()
            actor = self.ready.get(slot)
            lane = self.lanes[slot]
            if actor is None or slot in self.retired or len(lane) >= capacity or (
                    lane and slot in self.alone):
                continue  # a token of an actor gone, not ready or busy (release gives it back)
            if self.again and self.again[0].row in self.suspects:
                if lane:
                    continue  # a suspect runs alone on its actor
                batch = [self.again.popleft()]
                self.alone.add(slot)
            else:
                batch = self.take(self.batcher.size)
            if not batch:
                self.tokens.appendleft(slot)
                break
            ref = actor._tc_run_batch.remote(self.wire.send(batch))
            if not self.lanes[slot]:
                self.running_since[slot] = time.monotonic()
            self.lanes[slot].append(ref)
            self.inflight[ref] = _Call(slot, actor, batch)
            self.inflight_rows += len(batch)
        running = sum(1 for lane in self.lanes if lane)
        self.stats.peak_concurrency = max(self.stats.peak_concurrency, running)

    def release(self, ref: ray.ObjectRef[Any]) -> _Call:
        call = self.inflight.pop(ref)
        self.inflight_rows -= len(call.batch)
        self.wire.done(call.batch)
        lane = self.lanes[call.slot]
        was_running = bool(lane) and lane[0] == ref
        lane.remove(ref)
        if was_running and lane:
            self.running_since[call.slot] = time.monotonic()
        if call.slot in self.alone and not lane:
            self.alone.discard(call.slot)
            self.tokens.extend([call.slot] * self.capacity())
        else:
            self.tokens.append(call.slot)
        return call

    # -- waiting -----------------------------------------------------------------------------

    def busy(self) -> bool:
        """Whether anything is left to wait for: calls in flight, or rows and actors to
        become ready for them."""
        self.fill()  # outcomes were handed out since the last fill: the bound has room
        if self.inflight:
            return True
        if not self.has_work():
            return False
        if not self.probes:  # rows left and no actor asked for: ask again
            for slot in range(self.pool.size):
                if slot not in self.ready and slot not in self.retired:
                    self.enlist(slot)
            self.fill()
        return bool(self.inflight or self.probes)

    def deadline(self) -> float | None:
        """When something must happen even if no call finishes (monotonic seconds)."""
        times: list[float] = []
        if self.policy.timeout is not None:
            times += [self.running_since[s] + self.policy.timeout
                      for s, lane in enumerate(self.lanes) if lane]
        waiting = [t for s, t in self.waiting_since.items() if s not in self.retired]
        if waiting and not self.noticed():
            times.append(min(waiting) + self.notice_after())
        if self.stalled_since is not None and self.policy.placement_timeout is not None:
            times.append(self.stalled_since + self.policy.placement_timeout)
        return min(times) if times else None

    def pending(self) -> list[ray.ObjectRef[Any]]:
        """What a turn waits on: the calls in flight and the probes of actors not ready."""
        return [*self.inflight, *self.probes]

    def time_left(self) -> float | None:
        """Seconds until the next deadline (None: none, wait for a call or probe)."""
        deadline = self.deadline()
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def wait(self) -> ray.ObjectRef[Any] | None:
        """The next finished call or probe, or None when a deadline has come (blocks)."""
        ready, _ = ray.wait(self.pending(), num_returns=1, timeout=self.time_left())
        return ready[0] if ready else None

    def turn(self, ref: ray.ObjectRef[Any] | None) -> list[Outcome]:
        """Act on what :meth:`wait` returned; the outcomes that can be handed out now.

        Every driver (blocking or asyncio) is ``while busy(): for o in turn(wait()): ...``
        with ``handed`` counted as each outcome is handed out.
        """
        slot: int | None = None
        if ref is None:  # a deadline came
            final = self.on_time()
        elif ref in self.probes:  # an actor is ready (or could not start)
            self.started(ref)
            final = []
        else:
            slot = self.inflight[ref].slot
            try:
                records = read_reply(ray.get(ref))
            except (RayActorError, OutOfMemoryError) as exc:  # the worker process died
                final = self.died(ref, exc)
            else:
                call = self.release(ref)
                self.batcher.observe(records)
                final = self.settle(records, call.batch)
                label = actor_label(call.slot)
                busy = self.stats.busy_time
                busy[label] = busy.get(label, 0.0) + sum(r.ended - r.started for r in records)
        out = self.deliver(final, slot)
        self.fill()
        return out

    def deliver(self, final: list[Outcome], slot: int | None) -> list[Outcome]:
        """Record final outcomes (checkpoint, progress, stats); those to hand out now."""
        if not final:
            return []
        if self.store is not None:
            self.store.record(final, actor_label(slot) if slot is not None else "")
        self.progress.update(len(final))
        self.stats.calls += len(final)
        return self.releasable(final)

    def on_time(self) -> list[Outcome]:
        """A deadline came: calls past their timeout fail; actors Ray has not placed are
        reported; with none placed for ``placement_timeout``, the run fails."""
        now = time.monotonic()
        if self.stalled_since is not None and self.policy.placement_timeout is not None \
                and now - self.stalled_since >= self.policy.placement_timeout:
            raise self.placement_error(now - self.stalled_since)
        late = [s for s, since in self.waiting_since.items()
                if now - since >= self.notice_after() and s not in self.retired]
        if late:
            self.notice(late)
        return self.overdue() if self.policy.timeout is not None else []

    def describe_wait(self) -> str:
        demand = self.pool.demand
        total = {**dict.fromkeys(demand, 0.0), **ray.cluster_resources()}
        available = ray.available_resources()
        return (f"one actor asks for {_amounts(demand)}; the Ray cluster has "
                f"{_amounts(total)} in all, "
                f"{_amounts({k: available.get(k, 0.0) for k in total})} available now")

    def notice_after(self) -> float:
        """Seconds an actor may wait for placement before it is reported: 10, or half of
        ``placement_timeout`` when that is shorter."""
        limit = self.policy.placement_timeout
        return _PLACEMENT_NOTICE_SECONDS if limit is None else min(
            _PLACEMENT_NOTICE_SECONDS, limit / 2)

    def noticed(self) -> bool:
        """Whether the wait for placement was already reported in the current state."""
        return self.warned_reduced if self.ready.keys() - self.retired else self.logged_waiting

    def notice(self, late: list[int]) -> None:
        active = len(self.ready.keys() - self.retired)
        if active and not self.warned_reduced:
            self.warned_reduced = True
            warnings.warn(
                f"{len(late)} of {self.pool.size} actors for {self.name!r} could not be "
                f"placed by Ray for {self.notice_after():g} s ({self.describe_wait()}); "
                f"running {active} calls at once until Ray places them",
                ConcurrencyReducedWarning, stacklevel=5)
        elif not active and not self.logged_waiting:
            self.logged_waiting = True
            limit = self.policy.placement_timeout
            log.warning("waiting for Ray to place actors for %r: none placed for %g s (%s); "
                        "%s", self.name, self.notice_after(), self.describe_wait(),
                        "waiting without limit (placement_timeout=None)" if limit is None
                        else f"giving up after placement_timeout={limit:g} s")
            self.progress.note("waiting for Ray to place actors")

    def placement_error(self, waited: float) -> ActorPlacementError:
        return ActorPlacementError(
            f"no actor for {self.name!r} could run for {waited:.0f} s "
            f"(placement_timeout={self.policy.placement_timeout:g}): {self.describe_wait()}. "
            "Free those resources, add a node that has them, ask for less in actor_options, "
            "or raise placement_timeout")

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
            self.stats.worker_deaths += 1
            for ref in list(lane):
                queued = self.release(ref)
                if ref is not running:
                    self.again.extendleft(reversed(queued.batch))
            self.lost(slot, call.actor)
            wall = time.time()
            timed_out: list[Outcome] = [
                Outcome(item.row, False, TimeoutError(
                    f"row {item.row} ran longer than timeout={self.policy.timeout}s; its actor "
                    "was killed and replaced"), wall - self.policy.timeout, wall, "")
                for item in call.batch]
            failed += self.settle(timed_out, call.batch)
        return failed

    # -- outcomes ----------------------------------------------------------------------------

    def settle(self, records: list[Outcome], batch: list[Item]) -> list[Outcome]:
        """The final outcomes; failed rows with retries left go back into ``again``."""
        if self.suspects:
            self.suspects.difference_update(item.row for item in batch)
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

        All calls the dead actor held are settled at this first news of its death. When it
        held one call of one row, that row is charged; a row charged ``max_worker_deaths``
        times fails with WorkerDiedError. When it held several rows (a batch, or a call
        queued behind the running one), which one killed it is unknown (a finished call's
        reply may die with the process): none is charged, and each runs again alone on its
        actor, where a death names its row.
        """
        call = self.inflight[ref]
        lane = self.lanes[call.slot]
        mine = [r for r in lane if self.inflight[r].actor is call.actor]
        held = [item for r in mine for item in self.release(r).batch]
        if not self.pool.owned:
            raise WorkerDiedError(
                f"an actor handed in by the user died and cannot be replaced: {exc}") from exc
        self.stats.worker_deaths += 1
        if isinstance(exc, OutOfMemoryError) or _MEMORY_KILL.search(str(exc)):
            self.shrink(call.slot)
        self.lost(call.slot, call.actor)
        self.batcher.reset()
        if len(held) > 1:
            self.suspects.update(item.row for item in held)
            self.stats.retries += len(held)
            self.again.extendleft(reversed(held))
            return []
        item = held[0]
        index = item.row
        self.deaths[index] = self.deaths.get(index, 0) + 1
        if self.deaths[index] < self.policy.max_worker_deaths:
            self.stats.retries += 1
            self.suspects.add(index)
            self.again.appendleft(item)
            return []
        now = time.time()
        error = WorkerDiedError(
            f"row {index} killed its worker {self.deaths[index]} times (segfault, os._exit, "
            f"out of memory, or killed); last cause: {exc}", index=index,
            deaths=self.deaths[index])
        self.stats.failures += 1
        self.suspects.discard(index)
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
            ConcurrencyReducedWarning, stacklevel=5)

    def releasable(self, final: list[Outcome]) -> list[Outcome]:
        """What can be handed out now: everything when unordered; in order, what is next in
        line (holding back only what arrived early)."""
        if not self.ordered:
            return final
        early, order = self.early, self.order
        for record in final:
            replaced = early.get(record.row)
            if replaced is not None and replaced.ok:  # a duplicate report of a row
                self.early_bytes -= weight(replaced.value)
            early[record.row] = record
            if record.ok:
                self.early_bytes += weight(record.value)
        out: list[Outcome] = []
        while order and order[0] in early:
            record = early.pop(order.popleft())
            if record.ok:
                self.early_bytes -= weight(record.value)
            out.append(record)
        return out

    def finish(self) -> None:
        """The run is over (done, failed, closed early or cancelled): final statistics, and
        every call still in flight stopped."""
        self.stats.wall_time = time.perf_counter() - self.clock
        self.stats.final_concurrency = self.pool.size - len(self.retired)
        self.abort()

    def abort(self) -> None:
        """Stop every call in flight: kill our busy actors, cancel on the user's."""
        for ref, call in list(self.inflight.items()):
            if not self.pool.discard(call.slot, call.actor) and ray.is_initialized():
                ray.cancel(ref)
        self.inflight.clear()
        self.inflight_rows = 0
        self.wire.close()


def run(state: Scheduler) -> Generator[Outcome, None, None]:
    """Run every item of ``state.source`` on ``state.pool``, at most ``pool.size`` calls
    running at once.

    Blocks on ``ray.wait`` (never polls). Calls go only to actors that have started, so an
    actor Ray cannot place holds no rows. Yields one outcome per item, in input order when
    ``ordered`` (holding back only what arrived early), else as they finish. Items are pulled
    from ``source`` only when an actor can take them, and never more than ``state.bound()``
    (``policy.max_buffered``) ahead of the outcomes handed out. Closing the generator early
    kills the calls in flight (actors we own are replaced lazily).
    """
    try:
        while state.busy():
            for outcome in state.turn(state.wait()):
                yield outcome
                state.handed += 1
    finally:
        state.finish()


async def arun(state: Scheduler) -> AsyncGenerator[Outcome, None]:
    """:func:`run` for asyncio: the same scheduler, waiting on the event loop instead of in
    ``ray.wait``, so the loop keeps running other tasks. Cancelling the task that iterates
    (or closing the generator) kills the calls in flight, as closing :func:`run` does."""
    waiter = _Waiter()
    try:
        while state.busy():
            for outcome in state.turn(await waiter.next(state)):
                yield outcome
                state.handed += 1
    finally:
        waiter.close()
        state.finish()


class _Waiter:
    """Waits on the event loop for the first of a run's calls and probes to finish: one
    asyncio future per Ray reference, made once when the reference is first waited on."""

    def __init__(self) -> None:
        self.futures: dict[ray.ObjectRef[Any], asyncio.Future[Any]] = {}

    async def next(self, state: Scheduler) -> ray.ObjectRef[Any] | None:
        """The next finished call or probe, or None when a deadline has come."""
        refs = state.pending()
        futures = self.futures
        for ref in refs:
            if ref not in futures:
                futures[ref] = asyncio.wrap_future(ref.future())
        if len(futures) > len(refs):  # settled without finishing (a timeout, a death)
            for gone in futures.keys() - set(refs):
                _drop(futures.pop(gone))
        done, _ = await asyncio.wait([futures[ref] for ref in refs],
                                     timeout=state.time_left(),
                                     return_when=asyncio.FIRST_COMPLETED)
        for ref in refs:
            future = futures[ref]
            if future in done:
                _drop(futures.pop(ref))  # its value is read by ray.get in turn()
                return ref
        return None

    def close(self) -> None:
        for future in self.futures.values():
            _drop(future)
        self.futures.clear()


def _drop(future: asyncio.Future[Any]) -> None:
    """Let go of a future: cancel it if pending; if it failed, mark its exception as seen
    (Ray's own error is read through ray.get), so asyncio does not log it as lost."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()
