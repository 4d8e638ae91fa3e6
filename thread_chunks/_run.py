"""The scheduling engine every entry point ends in: one :class:`Dispatcher` per pool of
actors, serving every :class:`Run` (one ``map``/``imap``/``amap``) open on it.

The dispatcher owns what belongs to the pool: which actors are ready, the calls in flight on
each (of whichever run), probes, placement notices, timeouts, deaths and memory kills; free
actors go to the open runs in turn (round-robin). A run owns what is its own: its input and
read-ahead bound, retries and suspects, ordered release, its checkpoint, progress bar and
statistics.

Nobody owns a thread. Ray reports each finished reference (a call or a probe) from its
callback thread into one queue and wakes every open run; whichever driver wakes first (the
thread iterating a run, or an asyncio task) processes the queue for all of them under the
dispatcher's lock and hands each outcome to its run. A run's driver waits on its own wake-up
(a ``threading.Event``, or an ``asyncio.Event`` for ``arun``): never a poll, and no list of
pending references is rebuilt per result.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import OutOfMemoryError, RayActorError, RayError

from ._actor import (
    ROW,
    Item,
    NodeMemory,
    Outcome,
    failed,
    read_reply,
)
from ._engine.run import Run
from ._engine.wake import AsyncWake as _AsyncWake
from ._engine.wake import Wake as _Wake
from ._errors import (
    ActorPlacementError,
    ConcurrencyReducedWarning,
    ThreadChunksError,
    WorkerDiedError,
    warn_user,
)
from ._pool import Pool
from ._session import watch_shutdown
from ._wire import pack_batch

log = logging.getLogger("thread_chunks")

_PLACEMENT_NOTICE_SECONDS = 10.0
"""An actor Ray has not placed after this long is reported: a ConcurrencyReducedWarning while
others run, a log line and a progress-bar note while none does."""
_START_FAILURES = 3
_INNOCENT_USE = 128 << 20
_LEARN_SECONDS = 2.0
"""While nothing is known of a function's memory, the first call on a node runs alone for up
to this long; then what it uses is read every :data:`_SAMPLE_SECONDS`, and once it holds
still (grows by less than 5 %, or :data:`_STILL_BYTES`, while it ran or slept), it is
counted for that call and
for each call admitted beside it (most calls take their memory early; one that grows later
may still be killed, and its rows run again alone)."""
_SAMPLE_SECONDS = 0.5
_WORKED_SECONDS = 0.1
"""A first call's memory holds still only if, between two readings, it is asleep or it ran
this long: one starved of CPU on a loaded machine has not had the time to grow."""
_GONE = object()  # what an actor that died answers (see Dispatcher.answer)
_RAY_CHECK_SECONDS = 1.0
"""Where Ray gives no signal of its shutdown (see :func:`watch_shutdown`), a run's driver
waits at most this long before it looks whether Ray is still running."""
_STILL_BYTES = 16 << 20
"""A worker Ray killed for memory while using at most this much above an idle actor's
footprint was killed beside the one that used it (Ray kills several at once, and the newest
first): its rows are run again uncharged."""
"""An actor slot whose new actors die this many times in a row before starting fails the run."""
_MEMORY_KILL = re.compile(r"low on memory|out of memory|OUT_OF_MEMORY|memory usage threshold",
                          re.IGNORECASE)
_KILLED_AT = (re.compile(r"Selected to kill:[^\]]*?memory used\s*=\s*([0-9.]+)\s*(Gi?B)"),
              re.compile(r"memory used\s*[=:]\s*([0-9.]+)\s*(Gi?B)", re.IGNORECASE))
"""How much the killed worker used, in Ray's message of a memory kill: the worker it selected
to kill when the message lists several, else the one it names."""


@dataclass
class _Learning:
    """A node's first call while nothing is known of the function's memory."""

    slot: int
    """Where it runs."""
    due: float
    """When its memory is read next (monotonic seconds)."""
    seen: int = -1
    """What it had used at the last reading (bytes; -1: not read yet)."""
    cpu: float = 0.0
    """The CPU seconds its worker had used then."""
    asked: bool = False
    """A reading is on its way."""
    mark: str = field(default_factory=lambda: uuid.uuid4().hex)
    """The marker its calls leave on the node while they run: a worker Ray has not handed
    its call yet sleeps at its idle footprint too, which must not read as holding still."""


@dataclass
class _Call:
    """One actor call in flight: whose it is, where, and what it holds."""

    run: Run
    slot: int
    actor: ActorHandle[Any]
    batch: list[Item]
    need: int = 0
    """Memory counted for it on its node while it runs (bytes; see :meth:`Dispatcher.need`)."""
    exclusive: bool = False
    """It runs alone on its node (a row killed for memory, run again)."""
    orphaned: bool = False
    """Its run has ended: the call is left to finish (or was cancelled) and its outcome is
    dropped when it comes."""


def actor_label(slot: int) -> str:
    return f"actor-{slot}"


def _amounts(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items()
             if not k.startswith("node:") and k != "object_store_memory"}
    return ", ".join(f"{k}={v / 2**30:.3g} GiB" if k == "memory" else f"{k}={v:g}"
                     for k, v in sorted(shown.items())) or "nothing"



_DISPATCHERS_LOCK = threading.Lock()


class _Inbox:
    """Where Ray's callback thread reports finished references, and whom it wakes.

    A callback Ray holds for a reference that has not resolved yet (the probe of an actor Ray
    cannot place, a call still running) reaches only this, not the dispatcher: so a pool whose
    function was dropped is freed, its actors with it, whatever it was still waiting for."""

    def __init__(self) -> None:
        self.finished: deque[ray.ObjectRef[Any]] = deque()
        self.wakes: tuple[_Wake, ...] = ()  # of the open runs (replaced whole)
        self.gone = False
        """Ray's shutdown began (the references pending then never resolve)."""
        self.over = False
        """... and is over."""
        self.watched = watch_shutdown(self)
        """A shutdown of Ray is reported here as it happens (else waits are capped at
        :data:`_RAY_CHECK_SECONDS`, to look)."""

    def finish(self, ref: ray.ObjectRef[Any], _: object) -> None:
        self.finished.append(ref)  # deque.append is atomic: no lock on Ray's thread
        self.wake()

    def wake(self) -> None:
        for wake in self.wakes:
            wake.set()

    def ray_stopping(self) -> None:
        self.gone = True

    def ray_stopped(self) -> None:
        self.over = True
        self.wake()


class Dispatcher:
    """The calls on one pool's actors, for every run open on it (see the module's doc)."""

    @classmethod
    def of(cls, pool: Pool) -> Dispatcher:
        """The dispatcher of ``pool`` in its current Ray session (a new one after Ray was
        restarted: the old actors are gone with it)."""
        with _DISPATCHERS_LOCK:
            found = pool.dispatcher
            if not isinstance(found, Dispatcher) or found.session != pool.session or \
                    found.size != pool.size:
                found = pool.dispatcher = cls(pool)
            return found

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.session = pool.session
        self.generation = pool.generation
        self.size = pool.size
        self.lock = threading.RLock()
        self.runs: deque[Run] = deque()  # open runs; the head has the next turn
        self.inbox = _Inbox()  # what Ray's callbacks reach: not the dispatcher (see _Inbox)
        self.futures: dict[ray.ObjectRef[Any], concurrent.futures.Future[Any]] = {}
        self.tokens: deque[int] = deque()  # one per call an actor may take (checked lazily)
        self.retired: set[int] = set()
        self.ready: dict[int, ActorHandle[Any]] = {}  # slot -> its started actor
        self.probes: dict[ray.ObjectRef[Any], tuple[int, ActorHandle[Any]]] = {}
        self.waiting_since: dict[int, float] = {}  # slot -> when its actor was asked for
        self.stalled_since: float | None = time.monotonic()  # no actor ready since then
        self.start_failures: dict[int, int] = {}
        self.warned_reduced = False
        self.logged_waiting = False
        self.lanes: list[deque[ray.ObjectRef[Any]]] = [deque() for _ in range(self.size)]
        self.running_since: list[float] = [0.0] * self.size
        self.inflight: dict[ray.ObjectRef[Any], _Call] = {}
        self.isolated_slots: set[int] = set()  # running a suspect, nothing queued behind it
        self.pipelining = False
        self.busy_slots = 0  # actors with a call
        self.timed = False  # an open run has a timeout: lanes are checked for deadlines
        # memory admission (see need/admits): bytes counted per node, per busy slot
        self.memory_mode: int | str | None = None  # the open runs' memory_budget
        self.slot_need = [0] * self.size
        self.slot_node = [""] * self.size
        self.node_use: dict[str, int] = {}
        self.readings: dict[str, NodeMemory] = {}  # a node's memory when none of ours ran
        self.started_since: dict[str, int] = {}  # actors of ours started there since then
        self.settling: dict[str, set[int]] = {}  # node -> workers killed there, maybe alive
        self.settles: dict[ray.ObjectRef[Any], tuple[int, ActorHandle[Any], str, set[int]]] \
            = {}
        self.learning: dict[str, _Learning] = {}  # node -> its first call, run to learn
        self.provisional: dict[str, int] = {}  # node -> what that call settled at using
        self.samples: dict[ray.ObjectRef[Any], tuple[int, ActorHandle[Any], str, int]] = {}

    # -- runs ------------------------------------------------------------------------------

    def open(self, run: Run) -> None:
        """Serve ``run`` from now on: it takes its turn for free actors."""
        with self.lock:
            run.pool_size = self.size
            if not self.runs:  # the first run after a pause: a fresh view of the actors
                now = time.monotonic()
                if self.generation != self.pool.generation:  # they get another function
                    self.generation = self.pool.generation
                    self.ready.clear()
                    self.probes.clear()
                    self.settles.clear()
                    self.samples.clear()
                    self.learning.clear()
                    self.provisional.clear()
                    self.waiting_since.clear()
                    self.tokens.clear()
                self.retired.clear()
                self.warned_reduced = self.logged_waiting = False
                self.waiting_since = dict.fromkeys(self.waiting_since, now)
                self.stalled_since = None if self.ready else now
            self.runs.append(run)
            self.runs_changed()
            for slot in range(self.size):
                if slot not in self.ready and slot not in self.retired and \
                        slot not in self.waiting_since:
                    self.enlist(slot)
            self.fill()

    def close(self, run: Run) -> None:
        """``run`` ended (done, failed, closed early or cancelled): stop its calls only.

        Its calls are stopped by killing their actor when every call on that actor is the
        run's own; else they are left to finish (a queued one is short: only calls under
        ``PIPELINE_BELOW_SECONDS`` are queued) and their outcomes dropped. They are not
        ``ray.cancel``-ed: cancelling a queued actor task leaves a gap in Ray's per-caller
        order of calls to that actor, which then stalls for 30 s and fails every call queued
        on it, another run's included. Calls of other runs are never touched."""
        with self.lock:
            if run in self.runs:
                self.runs.remove(run)
                self.runs_changed()
            run.stats.wall_time = time.perf_counter() - run.clock
            run.stats.final_concurrency = self.size - len(self.retired)
            mine = [call for call in self.inflight.values() if call.run is run]
            for call in mine:
                call.orphaned = True
            live = not self.ray_gone()  # else its actors are gone with Ray
            for slot in {call.slot for call in mine} if live else ():
                self.stop_orphans(slot)
            run.wire.close()
            if self.runs and live:
                self.fill()
        if run.on_end is not None:
            run.on_end(run.stats)

    def runs_changed(self) -> None:
        self.inbox.wakes = tuple(run.wake for run in self.runs)  # replaced whole: safe to read
        self.timed = any(run.policy.timeout is not None for run in self.runs)
        budgets = [run.policy.memory_budget for run in self.runs]
        given = [b for b in budgets if isinstance(b, int)]
        self.memory_mode = min(given) if given else (
            "auto" if "auto" in budgets else None)

    def stop_orphans(self, slot: int) -> None:
        """Stop the calls on ``slot`` whose runs ended, by killing the actor (ours) when no
        other run has a call there."""
        lane = self.lanes[slot]
        calls = [self.inflight[ref] for ref in lane]
        if calls and all(call.orphaned for call in calls) and self.pool.owned:
            for ref in list(lane):
                self.release(ref)
            self.lost(slot, calls[0].actor)  # killed: a fresh actor when a run needs it

    # -- actors ----------------------------------------------------------------------------

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
            if probe not in self.probes:
                self.probes[probe] = (slot, actor)
                self.watch(probe)
            self.waiting_since.setdefault(slot, time.monotonic())

    def mark_ready(self, slot: int, actor: ActorHandle[Any]) -> None:
        self.ready[slot] = actor
        if self.waiting_since.pop(slot, None) is not None and self.warned_reduced:
            log.info("an actor for %r was placed: %d calls at once", self.names(),
                     len(self.ready) - len(self.retired & self.ready.keys()))
        if self.logged_waiting:
            self.logged_waiting = False
            for run in self.runs:
                run.progress.note("")
        self.stalled_since = None
        self.start_failures.pop(slot, None)
        self.tokens.extend([slot] * self.capacity())

    def lost(self, slot: int, actor: ActorHandle[Any]) -> None:
        """``slot``'s actor is gone (discarded by us or dead): ask for a new one when a run
        is open (else the next run will)."""
        self.pool.discard(slot, actor)
        if self.ready.get(slot) is actor:
            del self.ready[slot]
        if not self.ready.keys() - self.retired and self.stalled_since is None:
            self.stalled_since = time.monotonic()
        if slot not in self.retired and self.runs:
            self.enlist(slot)

    def on_probe(self, probe: ray.ObjectRef[Any],
                 future: concurrent.futures.Future[Any] | None) -> None:
        """A probe resolved: its actor is ready, or it could not start."""
        slot, actor = self.probes.pop(probe)
        self.waiting_since.pop(slot, None)
        try:
            reading = ray.get(probe) if future is None else future.result()
        except RayActorError as exc:
            if getattr(exc, "actor_init_failed", False):
                raise ThreadChunksError(
                    f"the actors could not start (creating the actor or loading "
                    f"{self.names()!r} on it failed): {exc}") from exc
            if not self.pool.owned:
                raise WorkerDiedError(
                    f"an actor handed in by the user died and cannot be replaced: {exc}"
                ) from exc
            failures = self.start_failures[slot] = self.start_failures.get(slot, 0) + 1
            if failures >= _START_FAILURES:
                raise ThreadChunksError(
                    f"actors for {self.names()!r} died {failures} times in a row before "
                    f"starting; last cause: {exc}") from exc
            self.lost(slot, actor)
            return
        except RayError as exc:
            raise ThreadChunksError(
                f"the actors could not load {self.names()!r}: {exc}") from exc
        node = reading if isinstance(reading, NodeMemory) else None
        if self.pool.confirm(slot, actor, node):
            self.note_node(node)
            self.mark_ready(slot, actor)
        elif slot not in self.ready and slot not in self.retired and self.runs:
            self.enlist(slot)  # replaced meanwhile: wait for the new one

    def names(self) -> str:
        return self.runs[0].name if self.runs else "function"

    # -- memory ----------------------------------------------------------------------------

    def note_node(self, node: NodeMemory | None) -> None:
        """An actor started on ``node``: its reading becomes the node's when none of our calls
        runs there (so the reading holds only memory in use outside them); else the actor
        is counted, to take its idle footprint off the budget."""
        if node is None:
            return
        if node.node not in self.readings or not self.node_use.get(node.node):
            self.readings[node.node] = node
            self.started_since[node.node] = 0
        else:
            self.started_since[node.node] += 1

    def settle(self, slot: int, actor: ActorHandle[Any]) -> bool:
        """Ask ``slot``'s idle actor to wait until the worker killed for memory on its node
        is gone (see :meth:`LabelledActor._tc_settle`), unless one is asked already: until
        then nothing starts on the node."""
        key = self.node_key(slot)
        if any(node == key for _, _, node, _ in self.settles.values()):
            return False
        pids = set(self.settling[key])
        ref = actor._tc_settle.remote(sorted(pids))
        self.settles[ref] = (slot, actor, key, pids)
        self.watch(ref)
        return True

    def on_settle(self, ref: ray.ObjectRef[Any],
                  future: concurrent.futures.Future[Any] | None) -> None:
        """A killed worker's process is gone from its node (or the actor asked died)."""
        slot, actor, key, pids = self.settles.pop(ref)
        reading = self.answer(ref, future, slot, actor)
        if reading is _GONE:
            return  # the node stays settling: another actor is asked
        left = self.settling.get(key, set()) - pids
        if left:
            self.settling[key] = left
        else:
            self.settling.pop(key, None)
        if isinstance(reading, NodeMemory) and not self.node_use.get(key):
            self.readings[key] = reading  # its memory now, with every actor of ours started
            self.started_since[key] = 0

    def answer(self, ref: ray.ObjectRef[Any], future: concurrent.futures.Future[Any] | None,
               slot: int, actor: ActorHandle[Any]) -> Any:
        """The value of a question put to ``slot``'s idle actor (see :meth:`settle`,
        :meth:`sample`), whose token then comes back; ``_GONE`` when the actor died (killed
        too: Ray kills idle workers beside the one it chose), and it is replaced."""
        try:
            value = ray.get(ref) if future is None else future.result()
        except RayError:
            if self.ready.get(slot) is actor:
                self.lost(slot, actor)
            return _GONE
        if self.ready.get(slot) is actor and slot not in self.retired:
            self.tokens.append(slot)
        return value

    def node_key(self, slot: int) -> str:
        node = self.pool.node(slot)
        return f"?{slot}" if node is None else node.node

    def budget(self, slot: int) -> int | None:
        """Bytes the calls on ``slot``'s node may use together (None: no admission)."""
        mode = self.memory_mode
        if mode is None or isinstance(mode, int):
            return mode
        node = self.pool.node(slot)
        if node is None:
            return None
        reading = self.readings.get(node.node, node)
        return max(0, reading.budget() - self.started_since.get(node.node, 0) * reading.worker)

    def need(self, run: Run, head: Item | None, budget: int, slot: int
             ) -> tuple[int | None, bool]:
        """The memory counted for the next call of ``run`` on ``slot`` (``head``: the
        suspect row it will run alone) and whether it runs alone on its node; None when the
        slot's actor was taken to read its node's memory (see :meth:`sample`).

        The expected peak of the function's calls (the largest measured, or
        ``memory_per_call``); a row killed for memory takes the whole budget of its node;
        so does a call while nothing is known: one call per node runs first, to learn. A
        first call still running after :data:`_LEARN_SECONDS` has its use read on the node
        by an idle actor, and the calls admitted beside it count that (a long call must
        not leave the node idle for its whole length)."""
        if head is not None and head[ROW] in run.memory_suspects:
            return budget, True
        expected = self.pool.expected_peak()
        if expected is not None:
            return expected, False
        key = self.node_key(slot)
        first = self.learning.get(key)
        if first is None or not self.lanes[first.slot]:  # no first call runs there: this is
            self.learning.pop(key, None)  # one, and its window starts with it
            self.provisional.pop(key, None)
            return budget, False
        if key in self.provisional:
            return self.provisional[key], False
        if first.asked or time.monotonic() < first.due:
            return budget, False
        return (None, False) if self.sample(slot, key, first) else (budget, False)

    def sample(self, slot: int, key: str, first: _Learning) -> bool:
        """Ask ``slot``'s idle actor what the first call on its node has used so far (False
        when that call's worker is not known)."""
        node = self.pool.node(first.slot)
        if node is None or not node.pid:
            return False
        actor = self.ready[slot]
        ref = actor._tc_usage.remote(node.pid, first.mark)
        self.samples[ref] = (slot, actor, key, node.worker)
        first.asked = True
        self.watch(ref)
        return True

    def on_sample(self, ref: ray.ObjectRef[Any],
                  future: concurrent.futures.Future[Any] | None) -> None:
        """What the first call on a node has used so far: the need counted for it and for
        each call admitted beside it, until a call's peak is known."""
        slot, actor, key, idle = self.samples.pop(ref)
        first = self.learning.get(key)
        if first is not None:
            first.asked = False
        usage = self.answer(ref, future, slot, actor)
        if usage is _GONE or first is None:
            return
        rss, cpu, asleep, started = usage
        if not started:  # not handed to its worker yet (a loaded machine), or between calls
            first.seen, first.due = -1, time.monotonic() + _SAMPLE_SECONDS
            return
        used = max(0, int(rss) - idle)  # less the worker's own footprint
        still = first.seen >= 0 and used <= first.seen + max(first.seen // 20, _STILL_BYTES)
        if not still or not (asleep or cpu - first.cpu >= _WORKED_SECONDS):
            # growing, read once, or starved of CPU meanwhile (a loaded machine): read again
            first.seen, first.cpu = max(used, first.seen), cpu
            first.due = time.monotonic() + _SAMPLE_SECONDS
            return
        self.provisional[key] = used = max(used, first.seen)
        for call in list(self.inflight.values()):  # the first call: what it uses so far
            if not call.exclusive and call.need > used and self.slot_node[call.slot] == key:
                call.need = used
                self.count_need(call.slot)

    def admits(self, slot: int, need: int, budget: int) -> bool:
        """Whether a call needing ``need`` fits beside the calls running on ``slot``'s node.
        A call alone on its node always runs (nothing better can be done for it)."""
        key = self.slot_node[slot] if self.slot_need[slot] else self.node_key(slot)
        others = self.node_use.get(key, 0) - self.slot_need[slot]
        return others <= 0 or others + max(self.slot_need[slot], need) <= budget

    def count_need(self, slot: int) -> None:
        """Count the memory of the calls on ``slot`` (the largest: they run one by one)."""
        lane = self.lanes[slot]
        need = max((self.inflight[ref].need for ref in lane), default=0)
        if need != self.slot_need[slot]:
            if not self.slot_need[slot]:
                self.slot_node[slot] = self.node_key(slot)
            key = self.slot_node[slot]
            self.node_use[key] = self.node_use.get(key, 0) + need - self.slot_need[slot]
            self.slot_need[slot] = need

    # -- sending ---------------------------------------------------------------------------

    def next_run(self, queued: bool) -> Run | None:
        """The open run whose turn it is for a free actor (round-robin among those with
        work), moved to the back of the line. ``queued``: the call would wait behind another
        on its actor, which only runs of short calls do."""
        for _ in range(len(self.runs)):
            run = self.runs[0]
            self.runs.rotate(-1)
            if run.has_work() and (not queued or run.batcher.pipelined):
                return run
        return None

    def fill(self) -> None:
        """Give every free actor a call of the run whose turn it is."""
        pipelined = any(run.batcher.pipelined for run in self.runs)
        if pipelined and not self.pipelining:  # a second token per actor: one call runs,
            self.tokens.extend(s for s in self.ready if s not in self.retired)  # one waits
        self.pipelining = pipelined
        capacity = self.capacity()
        deferred: list[int] = []  # tokens of a queue slot no run can use now
        while self.tokens:
            slot = self.tokens.popleft()
            actor = self.ready.get(slot)
            lane = self.lanes[slot]
            if actor is None or slot in self.retired or len(lane) >= capacity or (
                    lane and slot in self.isolated_slots):
                continue  # a token of an actor gone, not ready or busy (release gives it back)
            queued = bool(lane)
            if queued and not all(self.inflight[r].run.batcher.pipelined for r in lane):
                continue  # a long call runs there: nothing waits behind it (release gives
            run = self.next_run(queued)  # the token back)
            if run is None:
                if queued:
                    deferred.append(slot)
                    continue
                self.tokens.appendleft(slot)
                break
            suspect = bool(run.retry_queue) and run.retry_queue[0][ROW] in run.suspects
            if suspect and lane:
                continue  # a suspect runs alone on its actor (release gives it back)
            if self.settling and self.node_key(slot) in self.settling:
                if not queued and self.settle(slot, actor):
                    continue  # its token comes back with the answer
                deferred.append(slot)  # memory of a killed worker: nothing starts there
                continue
            budget = self.budget(slot)
            need, exclusive, mark = 0, False, ""
            if budget is not None:
                wanted, exclusive = self.need(run, run.retry_queue[0] if suspect else None,
                                              budget, slot)
                if wanted is None:
                    continue  # its actor reads the node's memory (its token comes back)
                need = wanted
                if not self.admits(slot, need, budget):
                    deferred.append(slot)  # memory: it waits for calls on its node to end
                    continue
                if self.pool.expected_peak() is None:
                    first = self.learning.setdefault(self.node_key(slot), _Learning(
                        slot, time.monotonic() + _LEARN_SECONDS))
                    mark = first.mark if first.slot == slot else ""
            if suspect:
                batch = [run.retry_queue.popleft()]
                self.isolated_slots.add(slot)
            else:
                batch = run.take(run.batcher.size)
            if not batch:
                self.tokens.appendleft(slot)  # that run had no work after all: next run
                continue
            self.send(run, slot, actor, batch, need, exclusive, mark)
        self.tokens.extend(deferred)
        for run in self.runs:
            if self.busy_slots > run.stats.peak_concurrency:
                run.stats.peak_concurrency = self.busy_slots

    def send(self, run: Run, slot: int, actor: ActorHandle[Any], batch: list[Item],
             need: int = 0, exclusive: bool = False, mark: str = "") -> None:
        if run.store is not None:
            run.store.sending([item[ROW] for item in batch])
        sent = run.wire.send(batch)
        packed = pack_batch(sent)
        arguments = (sent,) if packed is None else packed
        ref = actor._tc_run_batch.remote(*arguments, mark=mark) if mark else \
            actor._tc_run_batch.remote(*arguments)
        lane = self.lanes[slot]
        if not lane:
            self.running_since[slot] = time.monotonic()
            self.busy_slots += 1
        lane.append(ref)
        self.inflight[ref] = _Call(run, slot, actor, batch, need, exclusive)
        if need:
            self.count_need(slot)
        run.inflight_calls += 1
        run.inflight_rows += len(batch)
        self.watch(ref)

    def release(self, ref: ray.ObjectRef[Any]) -> _Call:
        call = self.inflight.pop(ref)
        run = call.run
        run.inflight_calls -= 1
        run.inflight_rows -= len(call.batch)
        run.wire.done(call.batch)
        lane = self.lanes[call.slot]
        was_running = bool(lane) and lane[0] == ref
        lane.remove(ref)
        if call.need:
            self.count_need(call.slot)
        if was_running and lane:
            self.running_since[call.slot] = time.monotonic()
        if not lane:
            self.busy_slots -= 1
        if call.slot in self.isolated_slots and not lane:
            self.isolated_slots.discard(call.slot)
            self.tokens.extend([call.slot] * self.capacity())
        else:
            self.tokens.append(call.slot)
        return call

    # -- hearing back ----------------------------------------------------------------------

    def watch(self, ref: ray.ObjectRef[Any]) -> None:
        """Have Ray report ``ref`` when it finishes (from its callback thread)."""
        future = ref.future()
        self.futures[ref] = future
        future.add_done_callback(functools.partial(self.inbox.finish, ref))

    def turn(self, run: Run) -> list[Outcome] | None:
        """Do what is due for every run (finished calls and probes, deadlines, free
        actors); then ``run``'s outcomes to hand out now, [] when there are none yet (wait
        on ``run.wake``), None when the run is done. Raises what fails the run."""
        run.wake.clear()
        with self.lock:
            try:
                if not self.ray_gone():
                    self.pump()
            except Exception as exc:  # the pool cannot go on: every run fails with it
                if not self.ray_gone():  # (else it is what Ray raised while it went away)
                    for each in tuple(self.runs):
                        each.fail(exc)
            if self.ray_gone() and not self.ray_stopping():
                error = self.ray_gone_error()
                for each in tuple(self.runs):
                    each.fail(error)
            if run.ready:
                out = list(run.ready)
                run.ready.clear()
                return out
            if run.error is not None:
                raise run.error
            if run.done():
                return None
            if self.ray_gone():  # its shutdown is under way: its end wakes the run
                return []
            if not run.inflight_calls and not self.probes and run.has_work() \
                    and not self.ready.keys() - self.retired:
                for slot in range(self.size):  # rows left and no actor asked for: ask again
                    if slot not in self.ready and slot not in self.retired:
                        self.enlist(slot)
            return []

    def ray_gone(self) -> bool:
        """Whether Ray was shut down since this dispatcher was made, or its shutdown began:
        nothing the dispatcher waits for will come, and Ray must not be touched (a call
        could start a new Ray)."""
        return self.inbox.gone or not ray.is_initialized()

    def ray_stopping(self) -> bool:
        """Whether Ray's shutdown began in another thread and is not over: the run fails once
        it is (when its wake comes), so that nothing done after the failure (closing a
        checkpoint, our actors, a Ray we started) meets a Ray half shut down."""
        return self.inbox.gone and not self.inbox.over and ray.is_initialized()

    def ray_gone_error(self) -> ThreadChunksError:
        return ThreadChunksError(
            f"Ray was shut down while {self.names()!r} ran (ray.shutdown() was called, "
            "in this or another thread, or at exit): its calls in flight are lost. Results "
            "handed out so far stay handed out and those recorded in a checkpoint are kept; "
            "the next map (Ray running again) makes new actors and resumes from its "
            "checkpoint, if it has one")

    def pump(self) -> None:
        """Everything due: finished references, deadlines, then free actors to runs."""
        finished = self.inbox.finished
        while finished:
            ref = finished.popleft()
            future = self.futures.pop(ref, None)
            if ref in self.probes:
                self.on_probe(ref, future)
            elif ref in self.settles:
                self.on_settle(ref, future)
            elif ref in self.samples:
                self.on_sample(ref, future)
            elif ref in self.inflight:
                self.on_reply(ref, future)
        deadline = self.deadline()
        if deadline is not None and time.monotonic() >= deadline:
            self.on_time()
        self.fill()

    def on_reply(self, ref: ray.ObjectRef[Any],
                 future: concurrent.futures.Future[Any] | None) -> None:
        call = self.inflight[ref]
        try:
            reply = ray.get(ref) if future is None else future.result()
        except (RayActorError, OutOfMemoryError) as exc:  # the worker process died
            self.died(ref, exc)
            return
        except Exception as exc:
            self.release(ref)
            if not call.orphaned:
                call.run.fail(exc)
            return
        self.release(ref)
        if call.orphaned:
            return
        run = call.run
        replied = read_reply(reply)
        if replied.outcomes:
            self.learn(run, replied.peak, call.exclusive)
        run.batcher.observe(replied, run.pool_size)
        final = run.settle(replied.outcomes, call.batch, replied.ok)
        label = actor_label(call.slot)
        busy = run.stats.busy_time
        busy[label] = busy.get(label, 0.0) + replied.busy
        run.deliver(final, label, replied.size if final is replied.outcomes else None)

    def learn(self, run: Run, peak: int, exclusive: bool) -> None:
        """The highest peak measured among a call's rows: the run's statistics, and what
        calls of the function are expected to need (not from a row run alone after a memory
        kill: one row far above the others must not hold every later call to its size)."""
        if run.stats.peak_call_memory is None or peak > run.stats.peak_call_memory:
            run.stats.peak_call_memory = peak
        if not exclusive:
            self.pool.learn_peak(peak)

    def died(self, ref: ray.ObjectRef[Any], exc: RayActorError | OutOfMemoryError) -> None:
        """The actor of call ``ref`` died: replace it and run the rows it held again.

        Every call the dead actor held (of any run) is settled at this first news of its
        death. When it held one call of one row, that row is charged; a row charged
        ``max_worker_deaths`` times fails with WorkerDiedError. When it held several rows
        (a batch, or a call queued behind the running one, maybe of another run), which one
        killed it is unknown (a finished call's reply may die with the process): none is
        charged, and each runs again alone on its actor, where a death names its row.
        """
        call = self.inflight[ref]
        lane = self.lanes[call.slot]
        calls = [self.release(r) for r in list(lane) if self.inflight[r].actor is call.actor]
        if not self.pool.owned:
            error = WorkerDiedError(
                f"an actor handed in by the user died and cannot be replaced: {exc}")
            for each in calls:
                if not each.orphaned:
                    each.run.fail(error)
            return
        memory = isinstance(exc, OutOfMemoryError) or bool(_MEMORY_KILL.search(str(exc)))
        budget = self.budget(call.slot) if memory else None
        admitted = budget is not None
        node = self.pool.node(call.slot)
        used = _killed_at(str(exc), node.pid if node is not None else None)
        reading = None if node is None else self.readings.get(node.node, node)
        if memory and node is not None and node.pid:  # nothing starts there until it is gone
            self.settling.setdefault(node.node, set()).add(node.pid)
        idle = 0 if reading is None else reading.worker
        innocent = memory and 0 < used <= idle + _INNOCENT_USE  # killed beside the worker
        if memory and not admitted:
            self.shrink(call.slot)  # no memory admission: the last resort
        self.lost(call.slot, call.actor)
        live = [each for each in calls if not each.orphaned]
        alone = len(calls) == 1 and len(call.batch) == 1
        for run in {id(each.run): each.run for each in live}.values():
            held = [item for each in live if each.run is run for item in each.batch]
            if budget is None:
                run.charge_death(held, exc, alone)
            elif innocent:
                run.resend(held)
            elif alone and call.exclusive and self.beyond(run, held[0], used, budget, reading):
                run.too_large(held[0], used, budget, reading)
            else:
                run.killed_for_memory(held, used)

    @staticmethod
    def beyond(run: Run, item: Item, used: int, budget: int, node: NodeMemory | None) -> bool:
        """Whether a row killed for memory while alone on its node is beyond the node: it
        used what the node can give a call at all (up to Ray's threshold, less what was in
        use outside our calls: the budget's margin included), or it was killed
        ``max_worker_deaths`` times. A row killed alone using less is run again: Ray kills
        by the time calls started, so a row that starts while memory of a worker killed a
        moment before is still held, or while something else on the node grows, may be
        killed though it fits."""
        kills = run.memory_kills.get(item[ROW], 0) + 1
        most = budget if node is None else max(budget, int(
            node.threshold * node.total) - node.used)
        return used >= most or kills >= run.policy.max_worker_deaths

    def shrink(self, slot: int) -> None:
        """A worker was killed for memory: one call fewer at once from now on (never 0)."""
        active = self.size - len(self.retired)
        if active <= 1:
            return
        self.retired.add(slot)
        warn_user(
            f"a worker running {self.names()!r} was killed for lack of memory; running "
            f"{active - 1} calls at once instead of {active} for the rest of this run",
            ConcurrencyReducedWarning)

    # -- time ------------------------------------------------------------------------------

    def timeout_of(self, slot: int) -> float | None:
        """The timeout of the call running on ``slot`` (its own run's), if any."""
        lane = self.lanes[slot]
        return self.inflight[lane[0]].run.policy.timeout if lane else None

    def placement_timeout(self) -> float | None:
        """The shortest ``placement_timeout`` of the open runs (None: all wait forever)."""
        limits = [run.policy.placement_timeout for run in self.runs]
        given = [limit for limit in limits if limit is not None]
        return min(given) if given else None

    def deadline(self) -> float | None:
        """When something must happen even if no call finishes (monotonic seconds)."""
        times: list[float] = []
        if self.timed:
            for slot, lane in enumerate(self.lanes):
                if lane:
                    timeout = self.timeout_of(slot)
                    if timeout is not None:
                        times.append(self.running_since[slot] + timeout)
        if self.waiting_since and self.runs and not self.noticed():
            waiting = [t for s, t in self.waiting_since.items() if s not in self.retired]
            if waiting:
                times.append(min(waiting) + self.notice_after())
        limit = self.placement_timeout()
        if self.stalled_since is not None and limit is not None and self.runs:
            times.append(self.stalled_since + limit)
        if self.learning and self.runs and self.pool.expected_peak() is None:
            now = time.monotonic()  # the next reading of a first call (see need)
            times.extend(first.due for node, first in self.learning.items()
                         if node not in self.provisional and not first.asked
                         and first.due > now)
        return min(times) if times else None

    def time_left(self) -> float | None:
        """Seconds until the next deadline (None: none, wait for a call or probe)."""
        with self.lock:
            deadline = self.deadline()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if self.inbox.watched:
            return left
        return _RAY_CHECK_SECONDS if left is None else min(left, _RAY_CHECK_SECONDS)

    def on_time(self) -> None:
        """A deadline came: calls past their timeout fail; actors Ray has not placed are
        reported; with none placed for ``placement_timeout``, the runs fail."""
        now = time.monotonic()
        limit = self.placement_timeout()
        if self.stalled_since is not None and limit is not None \
                and now - self.stalled_since >= limit:
            error = self.placement_error(now - self.stalled_since, limit)
            for run in tuple(self.runs):
                if run.policy.placement_timeout is not None and \
                        now - self.stalled_since >= run.policy.placement_timeout:
                    run.fail(error)
            return
        late = [s for s, since in self.waiting_since.items()
                if now - since >= self.notice_after() and s not in self.retired]
        if late:
            self.notice(late)
        self.overdue()

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
        limit = self.placement_timeout()
        return _PLACEMENT_NOTICE_SECONDS if limit is None else min(
            _PLACEMENT_NOTICE_SECONDS, limit / 2)

    def noticed(self) -> bool:
        """Whether the wait for placement was already reported in the current state."""
        return self.warned_reduced if self.ready.keys() - self.retired else self.logged_waiting

    def notice(self, late: list[int]) -> None:
        active = len(self.ready.keys() - self.retired)
        if active and not self.warned_reduced:
            self.warned_reduced = True
            warn_user(
                f"{len(late)} of {self.size} actors for {self.names()!r} could not be "
                f"placed by Ray for {self.notice_after():g} s ({self.describe_wait()}); "
                f"running {active} calls at once until Ray places them",
                ConcurrencyReducedWarning)
        elif not active and not self.logged_waiting:
            self.logged_waiting = True
            limit = self.placement_timeout()
            log.warning("waiting for Ray to place actors for %r: none placed for %g s (%s); "
                        "%s", self.names(), self.notice_after(), self.describe_wait(),
                        "waiting without limit (placement_timeout=None)" if limit is None
                        else f"giving up after placement_timeout={limit:g} s")
            for run in self.runs:
                run.progress.note("waiting for Ray to place actors")

    def placement_error(self, waited: float, limit: float) -> ActorPlacementError:
        return ActorPlacementError(
            f"no actor for {self.names()!r} could run for {waited:.0f} s "
            f"(placement_timeout={limit:g}): {self.describe_wait()}. "
            "Free those resources, add a node that has them, ask for less in actor_options, "
            "or raise placement_timeout")

    def overdue(self) -> None:
        """Kill the actors whose running call passed its run's timeout: those rows fail; the
        calls queued behind it (of any run) are sent again, uncharged."""
        now = time.monotonic()
        for slot, lane in enumerate(self.lanes):
            timeout = self.timeout_of(slot)
            if timeout is None or now - self.running_since[slot] < timeout:
                continue
            running = lane[0]
            call = self.inflight[running]
            for ref in list(lane):
                queued = self.release(ref)
                if ref is not running and not queued.orphaned:
                    queued.run.retry_queue.extendleft(reversed(queued.batch))
            self.lost(slot, call.actor)
            if call.orphaned:
                continue
            run = call.run
            run.stats.worker_deaths += 1
            wall = time.time()
            timed_out: list[Outcome] = [
                failed(item[ROW], TimeoutError(
                    f"row {item[ROW]} ran longer than timeout={timeout}s; its actor "
                    "was killed and replaced"), wall - timeout, wall)
                for item in call.batch]
            run.deliver(run.settle(timed_out, call.batch), "")


def _killed_at(message: str, pid: int | None = None) -> int:
    """The bytes the worker ``pid`` used when Ray killed it for memory, from Ray's message
    (which may list several workers killed at once); 0 when it does not say."""
    mine = None if pid is None else re.search(
        rf"pid={pid}, actual memory used\s*=\s*([0-9.]+)\s*(Gi?B)", message)
    found = mine or _KILLED_AT[0].search(message) or _KILLED_AT[1].search(message)
    if found is None:
        return 0
    return int(float(found.group(1)) * (2**30 if found.group(2).lower() == "gib" else 1e9))


def run(pool: Pool, state: Run) -> Generator[list[Outcome], None, None]:
    """Run every item of ``state.source`` on ``pool``'s actors, sharing them with the other
    runs open on the pool: at most ``pool.size`` calls running at once in all.

    Waits on the run's wake-up (never polls). Calls go only to actors that have started, so
    an actor Ray cannot place holds no rows. Yields the outcomes, one per item, a part (a
    non-empty list) at a time as they can be handed out: in input order when ``ordered``
    (holding back only what arrived early), else as they finish. Items are pulled from
    ``source`` only when an actor can take them, and never more than ``state.bound()``
    (``policy.max_buffered``) ahead of the outcomes handed out; a part counts as handed out
    once the next one is asked for, so the bound holds while the user holds a result (it
    lags, never leads). Closing the generator early stops this run's calls (and no other
    run's).
    """
    dispatcher = Dispatcher.of(pool)
    dispatcher.open(state)
    try:
        while (out := dispatcher.turn(state)) is not None:
            if not out:
                state.wake.wait(dispatcher.time_left())
                continue
            yield out
            state.handed += len(out)
    finally:
        dispatcher.close(state)


async def arun(pool: Pool, state: Run) -> AsyncGenerator[list[Outcome], None]:
    """:func:`run` for asyncio: the same dispatcher, waiting on the event loop instead of
    in a thread, so the loop keeps running other tasks. Cancelling the task that iterates
    (or closing the generator) stops this run's calls, as closing :func:`run` does."""
    wake = _AsyncWake()
    state.wake = wake
    dispatcher = Dispatcher.of(pool)
    dispatcher.open(state)
    try:
        while (out := dispatcher.turn(state)) is not None:
            if not out:
                await wake.wait_async(dispatcher.time_left())
                continue
            yield out
            state.handed += len(out)
    finally:
        dispatcher.close(state)
