"""A seeded fake cluster that drives the scheduling core: fully deterministic from the seed (no
real time, no threads, no Ray).

The world keeps its own account of what happened (actors, the calls sent to each, what ran
when, every death and kill) and carries out the core's commands; after every event it hands
to the core it has the invariants checked (:mod:`tests.sim.invariants`) against that account.
Time moves only from one scheduled happening to the next, or to the core's deadline (a
:class:`Tick`).
"""

from __future__ import annotations

import heapq
import logging
import random
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from time import thread_time_ns
from typing import Protocol

from thread_chunks._actor import Item, NodeMemory, Outcome
from thread_chunks._actor import Replied as Reply
from thread_chunks._engine.run import Policy, Run, RunStats
from thread_chunks._engine.vocabulary import (
    ACTOR_DIED,
    Answered,
    AwaitKilled,
    CallFailed,
    Clock,
    Closed,
    Command,
    Died,
    Event,
    Handed,
    Kill,
    Opened,
    Placed,
    Probe,
    ReadUsage,
    Reloaded,
    Replied,
    Send,
    StartFailed,
    Tick,
)
from thread_chunks._progress import Progress

from .invariants import Invariants, SimViolation, Unchecked
from .scenario import RunSpec, Scenario, draw

MAX_EVENTS = 20_000
MAX_TIME = 200_000.0
TRACE = 30


class Core(Protocol):
    """What the world drives: the Scheduler (or a test double)."""

    def handle(self, event: Event) -> list[Command]: ...

    def deadline(self) -> float | None: ...


class FakeClock:
    """The world's clock: it moves only when the world moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1.7e9 + self.now


class SimPeaks:
    """What calls were measured to need (the pool's learned peak)."""

    def __init__(self, memory_per_call: int | None) -> None:
        self.peak: int | None = None
        self.memory_per_call = memory_per_call

    def expected_peak(self) -> int | None:
        return self.memory_per_call if self.peak is None else self.peak

    def learn_peak(self, peak: int) -> None:
        if self.peak is None or peak > self.peak:
            self.peak = peak


MakeCore = Callable[[Scenario, Clock, SimPeaks], Core]


def real_core(scenario: Scenario, clock: Clock, peaks: SimPeaks) -> Core:
    """The scheduling core under test."""
    from thread_chunks._engine.core import Scheduler
    return Scheduler(scenario.size, owned=scenario.owned, clock=clock, peaks=peaks,
                     describe_wait=lambda: "a simulated cluster")


class Binding:
    """How the world makes a run and plays its driver (the Run's own methods)."""

    def make_run(self, spec: RunSpec, source: Iterator[Item]) -> Run:
        policy = Policy(retries=spec.retries, timeout=spec.timeout,
                        placement_timeout=spec.placement_timeout,
                        max_buffered=spec.max_buffered,
                        max_buffered_bytes=spec.max_buffered_bytes)
        return Run(source, ordered=spec.ordered, batch_size=spec.batch_size,
                   progress=Progress(False, None), store=None, policy=policy,
                   stats=RunStats(), name=f"run{spec.rid}")

    def take(self, run: Run) -> list[Outcome] | None:
        """The outcomes the driver hands out now ([]: none yet; None: the run is done);
        raises what fails the run."""
        return run.to_hand_out()

    def error(self, run: Run) -> BaseException | None:
        return run.error

    def stats(self, run: Run) -> RunStats:
        return run.stats


@dataclass(eq=False)
class WorldRun:
    """A run as the world (its driver and its rows) sees it."""

    spec: RunSpec
    run: Run | None = None
    closed: str = ""
    """Why the driver closed it ("" while open): done, error, break, cancel."""
    handed: set[int] = field(default_factory=set)
    next_row: int = 0
    attempts: dict[int, int] = field(default_factory=dict)
    succeeded: set[int] = field(default_factory=set)
    raised: set[int] = field(default_factory=set)
    raised_attempts: int = 0
    troubled: set[int] = field(default_factory=set)
    """Rows that had an attempt fail (raised, died, killed)."""
    deaths: int = 0
    """Actor deaths and kills that held a call of this run (one per actor)."""
    rows_hit: int = 0
    """Rows of this run held by those actors."""
    alone: dict[int, bool] = field(default_factory=dict)
    """Per row: whether its last death was of a call of it alone, alone on its actor."""
    alone_on_node: dict[int, bool] = field(default_factory=dict)
    """Per row: whether, when its worker last died running it, no other call ran on its
    node."""
    last_call: dict[int, Call] = field(default_factory=dict)
    """Per row: the last call that held it."""
    read: int = 0
    """Rows sent at least once (read from the input)."""

    @property
    def open(self) -> bool:
        return self.run is not None and not self.closed


@dataclass(eq=False)
class Call:
    """One call as sent by the core and run by the world."""

    cid: int
    wr: WorldRun
    actor: Actor
    rows: list[int]
    sent_at: float
    mark: str
    need: int
    """What the world knew calls need when it was sent (0: nothing yet; see invariant 4)."""
    exclusive: bool
    started_at: float | None = None
    memory: int = 0
    killed_at: float | None = None


@dataclass(eq=False)
class NodeState:
    name: str
    total: int
    threshold: float
    outside: int
    worker: int
    capacity: int
    alive: bool = True
    actors: list[Actor] = field(default_factory=list)
    """Live actors on it (placed or being placed)."""
    running: int = 0
    """Bytes the running calls use."""
    monitor: bool = False
    lingering: dict[int, tuple[int, float]] = field(default_factory=dict)
    """Workers killed for memory whose process is not gone yet: pid -> (bytes, until)."""
    heard: dict[int, float] = field(default_factory=dict)
    """Of those, the ones the core heard of (a Died for memory): pid -> when."""
    reading: int | None = None
    """What the node used when the core last read it with no call running there."""
    since_reading: int = 0
    """Actors placed there since (the core counts each off the budget)."""

    def read(self) -> None:
        """The core is handed a reading of this node now."""
        if any(actor.running is not None for actor in self.actors):
            self.since_reading += 1
        else:
            self.reading, self.since_reading = self.used(), 0

    def cautious_budget(self) -> int:
        """The budget as the core can know it: from its last reading with no call running,
        less a worker's footprint for each actor placed since (dead or not), and never
        above :meth:`budget`."""
        if self.reading is None:
            return self.budget()
        margin = max(self.total // 20, 256 << 20)
        known = int(self.threshold * self.total) - self.reading - margin - \
            self.since_reading * self.worker
        return min(known, self.budget())

    def used(self) -> int:
        return self.outside + self.worker * len(self.actors) + self.running + sum(
            held for held, _ in self.lingering.values())

    def budget(self) -> int:
        """What calls may use together before Ray's monitor kills (as NodeMemory.budget),
        counting the actors the core was told of."""
        margin = max(self.total // 20, 256 << 20)
        placed = sum(1 for actor in self.actors if actor.placed)
        return int(self.threshold * self.total) - self.outside - self.worker * placed - margin


@dataclass(eq=False)
class Actor:
    slot: int
    inc: int
    pid: int
    node: NodeState | None = None
    placed: bool = False
    """Reported Placed to the core."""
    alive: bool = True
    killed: bool = False
    """By the core's Kill."""
    death: tuple[bool, int] = (False, 0)
    """How it died: killed for memory, bytes it used."""
    queue: deque[Call] = field(default_factory=deque)
    running: Call | None = None
    token: int = 0
    dead_calls: list[Call] = field(default_factory=list)
    """Calls sent to it after it died, to report."""


class World:
    """One simulated cluster and its runs, driving ``core``."""

    def __init__(self, scenario: Scenario, make_core: MakeCore = real_core,
                 binding: Binding | None = None, trace: int = TRACE, checks: bool = True
                 ) -> None:
        self.scenario = scenario
        self.rng = random.Random(scenario.seed * 7919 + 1)
        self.clock = FakeClock()
        self.peaks = SimPeaks(scenario.memory_per_call)
        self.binding = binding or Binding()
        self.core = make_core(scenario, self.clock, self.peaks)
        self.queue: list[tuple[float, int, bool, Callable[[], None]]] = []
        self.seq = 0
        self.activity = 0  # pending happenings that are not the scenario's own
        self.events = 0
        self.sends = 0
        self.trace: deque[str] = deque(maxlen=trace)
        self.nodes = [NodeState(n.name, n.total, n.threshold, n.outside, n.worker,
                                n.capacity) for n in scenario.nodes]
        self.runs = [WorldRun(spec) for spec in scenario.runs]
        self.by_run: dict[int, WorldRun] = {}
        self.actors: dict[tuple[int, int], Actor] = {}
        self.current: dict[int, Actor] = {}  # slot -> its newest actor
        self.waiting: deque[Actor] = deque()  # actors waiting for capacity
        self.calls: dict[int, Call] = {}  # sent and not yet reported
        self.questions: set[int] = set()
        self.pids = 1000
        self.executing = 0
        self.running_on: dict[int, int] = {}  # slot -> its actors running a call
        self.timings: dict[str, list[int]] | None = None  # event kind -> ns per event
        self.measure_from = 0  # replies heard before timing begins
        self.replies = 0
        self.stop_after: int | None = None  # timed events, then the world stops
        self.max_events = MAX_EVENTS
        self.idle_since: dict[int, float] = {}  # slot -> since when its actor idles (inv. 5)
        self.learned: int | None = None  # the largest peak the core was told of (see inv. 4)
        self.memory_suspects: set[tuple[int, int]] = set()
        self.streak = 0  # Ticks in a row at a deadline already past
        self.spins = 0
        self.starving: tuple[int, int] | None = None  # (sends, ticks) when it began
        self.ticks = 0
        self.inv = Invariants(self) if checks else Unchecked(self)

    # -- the loop ---------------------------------------------------------------------------

    def at(self, when: float, action: Callable[[], None], activity: bool = True) -> None:
        self.seq += 1
        self.activity += activity
        heapq.heappush(self.queue, (when, self.seq, activity, action))

    def run(self) -> World:
        for wr in self.runs:
            self.at(wr.spec.open_at, partial(self.open, wr), activity=False)
            if wr.spec.cancel_at is not None:
                self.at(wr.spec.cancel_at, partial(self.close, wr, "cancel"), activity=False)
        for node, spec in zip(self.nodes, self.scenario.nodes, strict=True):
            if spec.lost_at is not None:
                self.at(spec.lost_at, partial(self.lose, node), activity=False)
        while not all(wr.closed for wr in self.runs):
            self.inv.quiet_check()
            due = self.queue[0][0] if self.queue else None
            timings = self.timings
            if timings is not None and self.replies >= self.measure_from:
                began = thread_time_ns()
                deadline = self.core.deadline()
                timings.setdefault("deadline()", []).append(thread_time_ns() - began)
                if self.stop_after is not None and len(timings["deadline()"]) >= \
                        self.stop_after:
                    break
            else:
                deadline = self.core.deadline()
            if deadline is not None and (due is None or deadline <= due):
                self.tick(deadline)
            elif due is not None:
                when, _, activity, action = heapq.heappop(self.queue)
                self.activity -= activity
                self.clock.now = max(self.clock.now, when)
                action()
            else:
                self.inv.stalled()
                break
            self.drive()
            if self.events > self.max_events or self.clock.now > MAX_TIME:
                self.inv.fail(5, f"no end after {self.events} events, "
                                 f"{self.clock.now:.0f} s simulated")
        return self

    def tick(self, deadline: float) -> None:
        """The clock reaches the core's deadline. A deadline already past (the core found
        nothing due at it) is handed in again a microsecond later, as a real clock would
        have moved on meanwhile; those are counted in ``spins``."""
        if deadline > self.clock.now:
            self.clock.now = deadline
            self.streak = 0
        else:
            self.clock.now += 1e-6
            self.spins += 1
            self.streak += 1
            if self.streak > 50:
                self.inv.fail(5, f"deadline {deadline} stays due: Tick after Tick, "
                                 "nothing changes")
        self.ticks += 1
        if self.streak > 1:  # the same Tick again: counted, not traced
            self.events += 1
            self.trace[-1] = f"#{self.events} t={self.clock.now:.6f} Tick() x{self.streak}"
            self.core.handle(Tick())
            self.inv.after_event()
            return
        self.feed(Tick())

    def feed(self, event: Event) -> None:
        """Hand ``event`` to the core, carry out its commands, check the invariants."""
        self.events += 1
        self.note(f"#{self.events} t={self.clock.now:.4f} {self.describe(event)}")
        timings = self.timings
        if timings is not None and self.replies >= self.measure_from:
            began = thread_time_ns()
            commands = self.core.handle(event)
            timings.setdefault(type(event).__name__, []).append(thread_time_ns() - began)
        else:
            commands = self.core.handle(event)
        for command in commands:
            self.note(f"    -> {self.describe(command)}")
            self.carry(command)
        self.inv.after_event()

    def note(self, line: str) -> None:
        self.trace.append(line)

    def rid(self, run: object) -> str:
        wr = self.by_run.get(id(run))
        return "?" if wr is None else str(wr.spec.rid)

    def describe(self, thing: Event | Command) -> str:
        if isinstance(thing, Send):
            return (f"Send(call={thing.call}, slot={thing.slot}/{thing.actor}, "
                    f"run={self.rid(thing.run)}, rows={[i[0] for i in thing.batch]}"
                    f"{', mark' if thing.mark else ''})")
        if isinstance(thing, Replied):
            return f"Replied(call={thing.call}, rows={[o[0] for o in thing.reply.outcomes]})"
        if isinstance(thing, (Opened, Closed)):
            return f"{type(thing).__name__}(run={self.rid(thing.run)})"
        if isinstance(thing, Handed):
            return f"Handed(run={self.rid(thing.run)}, n={thing.n})"
        if isinstance(thing, Placed):
            node = thing.node
            return (f"Placed(slot={thing.slot}/{thing.actor}, "
                    f"{node.node if node else None}, used={node.used >> 20 if node else 0}M)")
        if isinstance(thing, Died):
            return (f"Died(call={thing.call}, memory={thing.memory}, "
                    f"used={thing.used >> 20}M)")
        return repr(thing)

    # -- the driver ---------------------------------------------------------------------------

    def open(self, wr: WorldRun) -> None:
        if self.scenario.reload and not any(each.open for each in self.runs) and any(
                each.closed for each in self.runs):
            self.learned = None  # another function: nothing known of its memory
            self.peaks.peak = None
            self.memory_suspects.clear()
            self.feed(Reloaded())
        wr.run = self.binding.make_run(wr.spec, self.source(wr.spec))
        self.by_run[id(wr.run)] = wr
        self.feed(Opened(wr.run))

    def source(self, spec: RunSpec) -> Iterator[Item]:
        for row in range(len(spec.rows)):
            if row == spec.source_fails_at:
                raise ValueError(f"the input of run {spec.rid} failed at row {row}")
            yield (row, (spec.rid, row), None)

    def close(self, wr: WorldRun, why: str) -> None:
        if not wr.open:
            return
        assert wr.run is not None
        wr.closed = why
        self.inv.on_closed(wr)
        self.feed(Closed(wr.run))

    def drive(self) -> None:
        """What each run's driver does now: hand out its outcomes, end the run when it is
        done, failed or broken off."""
        moved = True
        while moved:
            moved = False
            for wr in self.runs:
                if not wr.open:
                    continue
                run = wr.run
                assert run is not None
                try:
                    out = self.binding.take(run)
                except Exception:
                    self.close(wr, "error")
                    moved = True
                    continue
                if out:
                    for outcome in out:
                        self.inv.on_outcome(wr, outcome)
                    self.feed(Handed(run, len(out)))
                    moved = True
                stop = wr.spec.stop_after
                if stop is not None and len(wr.handed) >= stop:
                    self.close(wr, "break")
                elif out is None:
                    self.close(wr, "done")
                else:
                    continue
                moved = True

    # -- actors ------------------------------------------------------------------------------

    def carry(self, command: Command) -> None:
        if isinstance(command, Send):
            self.send(command)
        elif isinstance(command, Probe):
            self.probe(command)
        elif isinstance(command, Kill):
            self.kill(command)
        elif isinstance(command, AwaitKilled):
            self.await_killed(command)
        elif isinstance(command, ReadUsage):
            self.ask(command.question, command.slot, command.actor,
                     lambda _: self.usage(command.pid, command.mark))

    def probe(self, command: Probe) -> None:
        slot, inc = command.slot, command.actor
        if not 0 <= slot < self.scenario.size:
            self.inv.fail(1, f"a probe for slot {slot} of a pool of {self.scenario.size}")
        known = self.actors.get((slot, inc))
        if known is not None:
            if known.placed and known.alive:
                self.at(self.clock.now + 0.001, partial(self.report_placed, known))
            elif known.placed:
                self.at(self.clock.now + 0.001, partial(self.start_failed, known))
            return
        self.pids += 1
        actor = self.actors[(slot, inc)] = Actor(slot, inc, self.pids)
        self.current[slot] = actor
        roll = self.rng.random()
        delay = self.rng.expovariate(2.0) + (
            20.0 if self.rng.random() < self.scenario.slow_place else 0.0)
        if roll < self.scenario.start_fail:
            self.at(self.clock.now + delay, lambda: self.start_failed(actor))
        elif roll < self.scenario.start_fail + self.scenario.never_place:
            pass  # lost capacity: it is never placed
        else:
            self.waiting.append(actor)
            self.place()

    def place(self) -> None:
        """Actors waiting for capacity go to nodes that have room."""
        while self.waiting:
            actor = self.waiting[0]
            if actor.killed:
                self.waiting.popleft()
                continue
            room = [n for n in self.nodes if n.alive and len(n.actors) < n.capacity]
            if not room:
                return
            self.waiting.popleft()
            node = self.rng.choice(room)
            actor.node = node
            node.actors.append(actor)
            delay = self.rng.expovariate(2.0) + (
                20.0 if self.rng.random() < self.scenario.slow_place else 0.0)
            self.at(self.clock.now + delay, partial(self.report_placed, actor))

    def report_placed(self, actor: Actor) -> None:
        if actor.killed:
            return
        if not actor.alive or actor.node is None:
            self.start_failed(actor)
            return
        actor.placed = True
        actor.node.read()
        self.feed(Placed(actor.slot, actor.inc, self.reading(actor.node, actor)))

    def start_failed(self, actor: Actor) -> None:
        if actor.killed:
            return
        actor.alive = False
        self.feed(StartFailed(actor.slot, actor.inc, RuntimeError("the actor died starting"),
                              False))

    def reading(self, node: NodeState, actor: Actor) -> NodeMemory:
        return NodeMemory(node.name, node.total, node.used(), node.threshold, node.worker,
                          actor.pid)

    def usage(self, pid: int, mark: str) -> object:
        for actor in self.actors.values():
            if actor.pid == pid and actor.alive and actor.node is not None:
                call = actor.running
                if call is not None and call.mark == mark and call.started_at is not None:
                    return (actor.node.worker + call.memory,
                            self.clock.now - call.started_at, True, True)
                return (actor.node.worker, 0.0, True, False)
        return (0, 0.0, True, False)

    def ask(self, question: int, slot: int, inc: int,
            answer: Callable[[Actor], object], wait: float = 0.0) -> None:
        actor = self.actors.get((slot, inc))
        if actor is None or not actor.placed:
            self.inv.fail(1, f"question {question} to actor {slot}/{inc}, never placed")
            return
        if actor.killed:
            self.inv.fail(1, f"question {question} to actor {slot}/{inc}, which it killed")
        self.questions.add(question)

        def reply() -> None:
            self.questions.discard(question)
            value = answer(actor) if actor.alive else ACTOR_DIED
            self.feed(Answered(question, value))
        self.at(self.clock.now + wait + 0.01 + self.rng.random() * 0.05, reply)

    def kill(self, command: Kill) -> None:
        actor = self.actors.get((command.slot, command.actor))
        if actor is None or actor.killed:
            return
        self.inv.on_kill(actor)
        running = actor.running
        if running is not None and running.started_at is not None and running.wr.open and \
                running.wr.spec.timeout is not None and \
                self.clock.now - running.started_at + 1e-9 >= running.wr.spec.timeout:
            # timed out: the core has its outcome, a row killed for memory is one no more
            self.memory_suspects.difference_update(
                (running.wr.spec.rid, row) for row in running.rows)
        calls = self.end_actor(actor)
        actor.killed = True
        if calls:
            self.charge(calls)
        if self.scenario.stale_reports:
            for call in calls:
                self.at(self.clock.now + 0.01, partial(self.feed, Died(
                    call.cid, RuntimeError("the actor was killed"), False, 0)))

    def end_actor(self, actor: Actor) -> list[Call]:
        """``actor`` is gone (dead or killed): the calls it held, running first."""
        calls: list[Call] = []
        if actor.running is not None:
            calls.append(actor.running)
            self.executing -= 1
            self.running_on[actor.slot] -= 1
            if actor.node is not None:
                actor.node.running -= actor.running.memory
        calls.extend(actor.queue)
        calls.extend(actor.dead_calls)
        actor.queue.clear()
        actor.dead_calls.clear()
        actor.running = None
        actor.token += 1
        if actor.alive and actor.node is not None and actor in actor.node.actors:
            actor.node.actors.remove(actor)
        actor.alive = False
        for call in calls:
            call.killed_at = self.clock.now
            self.calls.pop(call.cid, None)
        self.place()
        return calls

    def charge(self, calls: list[Call]) -> None:
        """Record an actor's death (or kill) against the runs of the calls it held."""
        alone = len(calls) == 1 and len(calls[0].rows) == 1
        runs: set[int] = set()
        for call in calls:
            wr = call.wr
            if id(wr) not in runs:
                runs.add(id(wr))
                wr.deaths += 1
            wr.rows_hit += len(call.rows)
            for row in call.rows:
                wr.troubled.add(row)
                wr.alone[row] = alone

    def die(self, actor: Actor, memory: bool, used: int, why: str) -> None:
        """``actor``'s worker dies now: every call it held is reported died. Killed for
        memory, its process holds what it used a moment longer."""
        if not actor.alive:
            return
        actor.death = (memory, used)
        node = actor.node
        crowded = node is not None and any(
            other.running is not None for other in node.actors if other is not actor)
        calls = self.end_actor(actor)
        for call in calls[:1]:
            for row in call.rows:
                call.wr.alone_on_node[row] = not crowded
        if memory and node is not None and node.alive:
            until = self.clock.now + self.rng.uniform(0.05, 2.0)
            node.lingering[actor.pid] = (used, until)
            self.at(until, partial(self.gone, node, actor.pid))
        if not calls:
            return
        self.charge(calls)
        if memory and used > (node.worker if node else 0) + (128 << 20):
            self.memory_suspects.update((c.wr.spec.rid, row) for c in calls for row in c.rows)
        self.heard(actor, memory)
        for call in calls:
            self.feed(Died(call.cid, RuntimeError(why), memory, used))

    def heard(self, actor: Actor, memory: bool) -> None:
        """The core hears now that ``actor`` was killed (for memory or not)."""
        node = actor.node
        if memory and node is not None and actor.pid in node.lingering:
            node.heard.setdefault(actor.pid, self.clock.now)

    def gone(self, node: NodeState, pid: int) -> None:
        """A worker killed for memory is gone from ``node``."""
        node.lingering.pop(pid, None)
        node.heard.pop(pid, None)

    def await_killed(self, command: AwaitKilled) -> None:
        """An idle actor waits until the killed workers ``pids`` are gone from its node,
        then answers its node's reading."""
        actor = self.actors.get((command.slot, command.actor))
        node = actor.node if actor is not None else None
        wait = 0.0
        if node is not None:
            wait = max((until - self.clock.now for pid, (_, until) in node.lingering.items()
                        if pid in command.pids), default=0.0)
        self.ask(command.question, command.slot, command.actor, self.answer_killed, wait)

    def answer_killed(self, actor: Actor) -> object:
        """The reading an actor answers once the killed workers are gone."""
        if actor.node is None:
            return ACTOR_DIED
        actor.node.read()
        return self.reading(actor.node, actor)

    def lose(self, node: NodeState) -> None:
        node.alive = False
        for actor in list(node.actors):
            self.die(actor, False, 0, "the node was lost")
        node.actors.clear()

    # -- calls -------------------------------------------------------------------------------

    def send(self, command: Send) -> None:
        self.sends += 1
        self.starving = None
        actor = self.actors.get((command.slot, command.actor))
        wr = self.by_run.get(id(command.run))
        if actor is None or not actor.placed:
            self.inv.fail(1, f"call {command.call} sent to actor {command.slot}/"
                             f"{command.actor}, which was never placed")
            return
        if actor.killed:
            self.inv.fail(1, f"call {command.call} sent to actor {command.slot}/"
                             f"{command.actor}, which it killed")
        if wr is None or not wr.open:
            self.inv.fail(2, f"call {command.call} sends rows of run "
                             f"{self.rid(command.run)}, which is closed")
            return
        rows = [item[0] for item in command.batch]
        for item in command.batch:
            if item[1] != (wr.spec.rid, item[0]):
                self.inv.fail(2, f"call {command.call} for run {wr.spec.rid} holds row "
                                 f"{item[0]} of {item[1]}")
        exclusive = len(rows) == 1 and (wr.spec.rid, rows[0]) in self.memory_suspects
        need = self.learned if self.learned is not None else (
            self.scenario.memory_per_call or 0)
        call = Call(command.call, wr, actor, rows, self.clock.now, command.mark, need,
                    exclusive)
        for row in rows:
            if row not in wr.last_call:
                wr.read += 1
            wr.last_call[row] = call
        self.inv.on_send(wr)
        self.calls[call.cid] = call
        if not actor.alive:  # it died idle: the call fails at once
            actor.dead_calls.append(call)
            if len(actor.dead_calls) == 1:
                self.at(self.clock.now + 0.001, lambda: self.report_dead(actor))
            return
        actor.queue.append(call)
        if len(actor.queue) + (actor.running is not None) > 2:
            self.inv.fail(1, f"call {call.cid} is the third call on actor {actor.slot}/"
                             f"{actor.inc}: one runs and at most one waits behind it")
        if actor.running is None:
            self.start(actor)

    def report_dead(self, actor: Actor) -> None:
        calls = list(actor.dead_calls)
        actor.dead_calls.clear()
        if not calls:
            return
        for call in calls:
            self.calls.pop(call.cid, None)
            call.killed_at = self.clock.now
        self.charge(calls)
        memory, used = actor.death
        self.heard(actor, memory)
        for call in calls:
            self.feed(Died(call.cid, RuntimeError("the actor had died"), memory, used))

    def start(self, actor: Actor) -> None:
        call = actor.queue.popleft()
        actor.running = call
        self.executing += 1
        self.running_on[actor.slot] = self.running_on.get(actor.slot, 0) + 1
        call.started_at = self.clock.now
        rows = [call.wr.spec.rows[row] for row in call.rows]
        call.memory = max(row.memory for row in rows)
        node = actor.node
        assert node is not None
        node.running += call.memory
        self.inv.on_start(call)
        timeout = call.wr.spec.timeout
        if not self.scenario.owned and timeout is not None and \
                sum(row.duration for row in rows) + 1e-9 >= timeout:
            # it will run past its timeout on an actor the core may not kill: its rows fail
            # or run again then, as a death's would (not counted as one)
            call.wr.rows_hit += len(call.rows)
            call.wr.troubled.update(call.rows)
        token = actor.token
        elapsed = 0.0
        for spec in rows:
            if spec.crash and self.rng.random() < spec.crash:
                self.at(self.clock.now + elapsed + spec.duration / 2,
                        partial(self.crash, actor, token))
                break
            elapsed += spec.duration
        else:
            self.at(self.clock.now + elapsed, partial(self.end, actor, token))
        if node.used() > node.threshold * node.total and not node.monitor:
            node.monitor = True
            self.at(self.clock.now + 0.05, lambda: self.monitor(node))

    def monitor(self, node: NodeState) -> None:
        """Ray's memory monitor: above the threshold, the newest-started worker is killed,
        and maybe an idle one beside it."""
        node.monitor = False
        if not node.alive:
            return
        while node.used() > node.threshold * node.total:
            running = [a for a in node.actors if a.running is not None]
            if not running:
                return
            victim = max(running, key=lambda a: (a.running.started_at or 0.0, a.pid)
                         if a.running else (0.0, 0))
            call = victim.running
            assert call is not None
            used = node.worker + call.memory
            idle = [a for a in node.actors if a.running is None and a is not victim]
            self.die(victim, True, used, "the worker was killed for memory: OUT_OF_MEMORY")
            if idle and self.rng.random() < 0.3:
                beside = self.rng.choice(idle)
                self.die(beside, True, node.worker, "killed for memory beside another")

    def crash(self, actor: Actor, token: int) -> None:
        """The running call kills its worker (a segfault), unless that actor went meanwhile."""
        if token == actor.token:
            self.die(actor, False, 0, "segfault")

    def end(self, actor: Actor, token: int) -> None:
        """The running call ends, unless that actor went meanwhile."""
        if token != actor.token:
            return
        call = actor.running
        assert call is not None and actor.node is not None
        wr = call.wr
        outcomes: list[Outcome] = []
        start = self.clock.wall() - sum(wr.spec.rows[r].duration for r in call.rows)
        ok = True
        size = peak = 0
        for row in call.rows:
            spec = wr.spec.rows[row]
            tried = wr.attempts[row] = wr.attempts.get(row, 0) + 1
            if tried <= spec.raises:
                ok = False
                wr.raised.add(row)
                wr.troubled.add(row)
                wr.raised_attempts += 1
                outcomes.append((row, False, ValueError(f"row {row} of run {wr.spec.rid} "
                                                        f"raised"), start, start, "tb",
                                 spec.memory))
            else:
                wr.succeeded.add(row)
                value = payload(wr.spec.rid, row, spec.size)
                size += len(value)
                outcomes.append((row, True, value, start, start + spec.duration, "",
                                 spec.memory))
            peak = max(peak, spec.memory)
            start += spec.duration
        actor.running = None
        self.executing -= 1
        self.running_on[actor.slot] -= 1
        actor.node.running -= call.memory
        self.calls.pop(call.cid, None)
        if actor.queue:
            self.start(actor)
        took = self.clock.now - (call.started_at or 0.0)
        if self.scenario.call_fails and self.rng.random() < self.scenario.call_fails:
            self.feed(CallFailed(call.cid, RuntimeError("the reply could not be read")))
            return
        if wr.open and not call.exclusive:
            self.learned = peak if self.learned is None else max(self.learned, peak)
        # a row killed for memory runs alone until a call of it replies
        self.memory_suspects.difference_update((wr.spec.rid, row) for row in call.rows)
        reply = Reply(outcomes, ok, size, peak, took, took)
        self.replies += 1
        self.feed(Replied(call.cid, reply))


def payload(rid: int, row: int, size: int) -> bytes:
    """A row's pickled result: whose it is, padded to its size."""
    mark = f"{rid}:{row}".encode()
    return mark + b"." * max(0, size - len(mark))


def simulate(seed: int, make_core: MakeCore = real_core, binding: Binding | None = None,
             scenario: Scenario | None = None, trace: int = TRACE) -> World:
    """Run the world drawn from ``seed`` against the core; raises :class:`SimViolation`.
    The core's warnings and log lines (actors not placed, memory kills) are silenced."""
    world = World(scenario or draw(seed), make_core, binding, trace)
    log = logging.getLogger("thread_chunks")
    disabled, log.disabled = log.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return world.run()
    finally:
        log.disabled = disabled


def replay(seed: int, make_core: MakeCore = real_core) -> str:
    """Run ``seed`` again and return its whole trace (or the violation's report)."""
    try:
        world = simulate(seed, make_core, trace=1_000_000)
    except SimViolation as exc:
        return str(exc)
    return "\n".join(world.trace) + f"\nseed {seed}: no violation ({world.events} events)"


__all__ = ["Binding", "Core", "FakeClock", "SimPeaks", "SimViolation", "World",
           "replay", "simulate"]
