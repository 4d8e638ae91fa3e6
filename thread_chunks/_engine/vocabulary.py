"""What the scheduling core hears and says: events in, commands out, and its clock.

The core (:class:`~thread_chunks._engine.core.Scheduler`) never touches Ray. Whoever drives it
(the Ray adapter, or the simulator in tests/sim/) turns what happened into an event, hands it to
``Scheduler.handle`` and carries out the commands it returns. Slots are numbered ``0 ..
size-1``; ``actor`` is the incarnation of a slot's actor, a number the core gives (a new one
after each :class:`Kill` or death), so a report about an actor since replaced is recognised and
ignored. Call and question ids are ints the core allocates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias

from .._actor import Item, NodeMemory
from .._actor import Replied as Reply

if TYPE_CHECKING:
    from .run import Run


class Clock(Protocol):
    """Where the core reads the time."""

    def monotonic(self) -> float:
        """Seconds for deadlines and since-times."""
        ...

    def wall(self) -> float:
        """``time.time()``: the timestamps of outcomes."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


ACTOR_DIED: object = object()
"""What :class:`Answered` carries when the actor asked died before answering."""


# -- commands (out of the core) ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Probe:
    """Make ``slot``'s actor if it has none (incarnation ``actor``) and report
    :class:`Placed` or :class:`StartFailed` once it has started and holds the current
    function."""

    slot: int
    actor: int


@dataclass(frozen=True, slots=True)
class Send:
    """Run ``batch`` of ``run`` on that actor; report :class:`Replied`, :class:`CallFailed` or
    :class:`Died` for ``call``. ``mark``: the marker a first call leaves on its node while it
    runs ("" for none; see :class:`ReadUsage`)."""

    call: int
    slot: int
    actor: int
    run: Run
    batch: list[Item]
    mark: str


@dataclass(frozen=True, slots=True)
class Kill:
    """Discard that actor (no event about it is needed afterwards: the core ignores stale
    ones)."""

    slot: int
    actor: int


@dataclass(frozen=True, slots=True)
class AwaitKilled:
    """Have that idle actor wait until the worker processes ``pids`` on its node are gone;
    report :class:`Answered` (its node's memory reading then, or :data:`ACTOR_DIED`)."""

    question: int
    slot: int
    actor: int
    pids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReadUsage:
    """Have that idle actor read what the worker ``pid`` (running a node's first call,
    marked ``mark``) uses; report :class:`Answered` with ``(rss, cpu, asleep, started)``
    (or :data:`ACTOR_DIED`)."""

    question: int
    slot: int
    actor: int
    pid: int
    mark: str


Command: TypeAlias = Probe | Send | Kill | AwaitKilled | ReadUsage


# -- events (into the core) ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Placed:
    """That actor started and holds the current function, on ``node`` (None: unknown)."""

    slot: int
    actor: int
    node: NodeMemory | None


@dataclass(frozen=True, slots=True)
class StartFailed:
    """That actor died before starting; ``init_failed``: its constructor (or loading the
    function) raised, which no new actor would cure."""

    slot: int
    actor: int
    error: BaseException
    init_failed: bool


@dataclass(frozen=True, slots=True)
class Replied:
    """``call`` finished: its decoded reply."""

    call: int
    reply: Reply


@dataclass(frozen=True, slots=True)
class CallFailed:
    """``call`` raised (not a death of its worker): its run fails."""

    call: int
    error: BaseException


@dataclass(frozen=True, slots=True)
class Died:
    """The worker of ``call`` died. ``memory``: Ray killed it for memory; ``used``: the bytes
    it used then (0: unknown)."""

    call: int
    error: BaseException
    memory: bool
    used: int


@dataclass(frozen=True, slots=True)
class Answered:
    """The answer to ``question`` (:class:`AwaitKilled`, :class:`ReadUsage`)."""

    question: int
    value: object


@dataclass(frozen=True, slots=True)
class Opened:
    """``run`` starts: it takes its turn for free actors."""

    run: Run


@dataclass(frozen=True, slots=True)
class Handed:
    """The driver handed ``n`` outcomes of ``run`` out."""

    run: Run
    n: int


@dataclass(frozen=True, slots=True)
class Closed:
    """``run`` ended (done, failed, closed early or cancelled): stop its calls only."""

    run: Run


@dataclass(frozen=True, slots=True)
class Reloaded:
    """The actors are to hold another function (no run is open): none is ready until probed
    again, and what was learned of the last function's first calls is void."""


@dataclass(frozen=True, slots=True)
class Tick:
    """The clock reached ``Scheduler.deadline()``."""


@dataclass(frozen=True, slots=True)
class Broken:
    """The pool cannot go on (Ray is gone, an actor could not load the function ...): every
    open run fails with ``error``."""

    error: BaseException


Event: TypeAlias = (Placed | StartFailed | Replied | CallFailed | Died | Answered | Opened
                    | Handed | Closed | Reloaded | Tick | Broken)


class Peaks(Protocol):
    """Who keeps what calls of the current function were measured to need at their peak (the
    pool, across runs; seeded from a checkpoint)."""

    def expected_peak(self) -> int | None:
        """The memory a call is expected to need (None: nothing known yet)."""
        ...

    def learn_peak(self, peak: int) -> None:
        """A call was measured at ``peak`` bytes."""
        ...
