"""The scheduling loop every entry point ends in."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

import ray
from ray.exceptions import RayActorError

from ._actor import Item, Record
from ._errors import WorkerDiedError
from ._pool import Pool
from ._progress import Progress
from ._rows import annotate

_TARGET_BATCH_SECONDS = 0.05
_MAX_BATCH = 1024


class Store(Protocol):
    """Where finished calls are recorded (the checkpoint)."""

    def record(self, records: list[Record], actor: str) -> None: ...


@dataclass
class RunStats:
    """What the last run did."""

    calls: int = 0
    """Calls finished in this run (successes and failures; resumed ones not counted)."""
    failures: int = 0
    """Calls that ended in an exception after their retries."""
    retries: int = 0
    """Calls run again: after an exception (``retries=``) or after their worker died."""
    worker_deaths: int = 0
    """Worker processes that died and were replaced."""
    peak_concurrency: int = 0
    """Most actor calls in flight at once (never above ``chunk_size``)."""
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


class Batcher:
    """How many rows go into one actor call.

    Fixed when the user says so; otherwise starts at 1 and grows (doubling) while a call's
    rows take much less than ``_TARGET_BATCH_SECONDS``, so tiny calls stop paying Ray's
    per-call overhead one by one, and shrinks at once when rows get slower.
    """

    def __init__(self, fixed: int | None) -> None:
        self.fixed = fixed
        self.size = fixed or 1

    def observe(self, records: list[Record]) -> None:
        if self.fixed is not None or not records:
            return
        per_row = max((records[-1][4] - records[0][3]) / len(records), 1e-7)
        ideal = max(1, min(_MAX_BATCH, int(_TARGET_BATCH_SECONDS / per_row)))
        self.size = min(ideal, self.size * 2)

    def reset(self) -> None:
        if self.fixed is None:
            self.size = 1


def _actor_label(slot: int) -> str:
    return f"actor-{slot}"


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
) -> Generator[Record, None, None]:
    """Run every item on ``pool``, at most ``pool.size`` actor calls at once.

    Blocks on ``ray.wait`` (never polls). Yields one record per item, in input order when
    ``ordered`` (holding back only what arrived early), else as they finish. Items are pulled
    from ``source`` only when an actor is free. Closing the generator early kills the calls in
    flight (actors we own are replaced lazily).
    """
    batcher = Batcher(batch_size)
    idle: deque[int] = deque(range(pool.size))
    inflight: dict[ray.ObjectRef[Any], tuple[int, list[Item]]] = {}
    again: deque[Item] = deque()  # rows to run again (retries, dead workers), before new rows
    attempts: dict[int, int] = {}  # index -> failed attempts so far (only rows that failed)
    deaths: dict[int, int] = {}
    order: deque[int] = deque()  # indices in first-submission order (ordered mode)
    early: dict[int, Record] = {}
    exhausted = False
    started = time.perf_counter()

    def take(n: int) -> list[Item]:
        nonlocal exhausted
        batch: list[Item] = []
        while again and len(batch) < n:
            batch.append(again.popleft())
        if len(batch) < n and not exhausted:
            fresh = list(islice(source, n - len(batch)))
            if len(fresh) < n - len(batch):
                exhausted = True
            if ordered:
                order.extend(item[0] for item in fresh)
            batch.extend(fresh)
        return batch

    def fill() -> None:
        while idle and (again or not exhausted):
            batch = take(batcher.size)
            if not batch:
                return
            slot = idle.popleft()
            ref = pool.handle(slot)._tc_run_batch.remote(batch)
            inflight[ref] = (slot, batch)
            stats.peak_concurrency = max(stats.peak_concurrency, len(inflight))

    def finished(record: Record) -> Iterator[Record]:
        if not ordered:
            yield record
            return
        early[record[0]] = record
        while order and order[0] in early:
            yield early.pop(order.popleft())

    try:
        fill()
        while inflight:
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            slot, batch = inflight.pop(ref)
            try:
                records: list[Record] = ray.get(ref)
            except RayActorError as exc:
                done = _worker_died(pool, slot, batch, exc, again, deaths, policy, stats,
                                    batcher, name)
                idle.append(slot)
                fill()
                for record in done:
                    stats.calls += 1
                    stats.failures += 1
                    if store is not None:
                        store.record([record], _actor_label(slot))
                    progress.update()
                    yield from finished(record)
                continue
            idle.append(slot)
            batcher.observe(records)
            final = _settle(records, batch, again, attempts, policy, stats, name)
            fill()
            label = _actor_label(slot)
            if records:
                stats.busy_time[label] = stats.busy_time.get(label, 0.0) + sum(
                    r[4] - r[3] for r in records)
            if store is not None and final:
                store.record(final, label)
            progress.update(len(final))
            stats.calls += len(final)
            for record in final:
                yield from finished(record)
    finally:
        stats.wall_time = time.perf_counter() - started
        for ref, (slot, _) in inflight.items():
            if not pool.discard(slot) and ray.is_initialized():
                ray.cancel(ref)


def _settle(
    records: list[Record],
    batch: list[Item],
    again: deque[Item],
    attempts: dict[int, int],
    policy: Policy,
    stats: RunStats,
    name: str,
) -> list[Record]:
    """The records that are final; failed rows with retries left go back into ``again``."""
    if all(record[1] for record in records):
        return records
    final: list[Record] = []
    for record, item in zip(records, batch, strict=True):
        if not record[1]:
            tried = attempts.get(record[0], 0) + 1
            attempts[record[0]] = tried
            if tried <= policy.retries and isinstance(record[2], policy.retry_on):
                stats.retries += 1
                again.append(item)
                continue
            stats.failures += 1
            annotate(record[2], item, name, record[5])
        final.append(record)
    return final


def _worker_died(
    pool: Pool,
    slot: int,
    batch: list[Item],
    exc: RayActorError,
    again: deque[Item],
    deaths: dict[int, int],
    policy: Policy,
    stats: RunStats,
    batcher: Batcher,
    name: str,
) -> list[Record]:
    """Replace the dead actor and queue its rows again; rows that killed too often fail."""
    stats.worker_deaths += 1
    if not pool.discard(slot):
        raise WorkerDiedError(
            f"an actor handed in by the user died and cannot be replaced: {exc}"
        ) from exc
    batcher.reset()
    failed: list[Record] = []
    if len(batch) > 1:  # innocent until proven guilty: retry each row on its own
        stats.retries += len(batch)
        again.extendleft(reversed(batch))
        return failed
    index = batch[0][0]
    deaths[index] = deaths.get(index, 0) + 1
    if deaths[index] >= policy.max_worker_deaths:
        now = time.time()
        error = WorkerDiedError(
            f"row {index} killed its worker {deaths[index]} times "
            f"(segfault, os._exit, out of memory, or killed); last cause: {exc}",
            index=index, deaths=deaths[index])
        annotate(error, batch[0], name, "")
        failed.append((index, False, error, now, now, ""))
    else:
        stats.retries += 1
        again.appendleft(batch[0])
    return failed
