"""Memory admission: what each node's calls may use together (its budget), what a call is
counted for (the learned peak of the function's calls, or a node's first call run alone to
learn it), and waiting out a worker Ray killed for memory before anything starts on its node.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from .._actor import ROW, Item, NodeMemory
from .slots import Call, Slot
from .vocabulary import ACTOR_DIED, AwaitKilled, Clock, Peaks, ReadUsage

if TYPE_CHECKING:
    from .run import Run

LEARN_SECONDS = 2.0
"""While nothing is known of a function's memory, the first call on a node runs alone for up
to this long; then what it uses is read every :data:`SAMPLE_SECONDS`, and once it holds still
(grows by less than 5 %, or :data:`STILL_BYTES`, while it ran or slept), it is counted for
that call and for each call admitted beside it (most calls take their memory early; one that
grows later may still be killed, and its rows run again alone)."""
SAMPLE_SECONDS = 0.5
WORKED_SECONDS = 0.1
"""A first call's memory holds still only if, between two readings, it is asleep or it ran
this long: one starved of CPU on a loaded machine has not had the time to grow."""
STILL_BYTES = 16 << 20
"""Growth between two readings below which a first call's memory holds still."""


@dataclass(slots=True)
class FirstCall:
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


@dataclass(slots=True)
class Question:
    """A question put to an idle actor: wait out killed workers, or read a first call."""

    slot: int
    actor: int
    node: str
    pids: frozenset[int] = frozenset()
    """Waiting out these workers (empty: reading a first call's usage)."""
    idle: int = 0
    """Reading a first call: its worker's own footprint, taken off what it uses."""
    reads_usage: bool = False
    """It reads a first call (:class:`ReadUsage`), not waits out killed workers."""


class Admission:
    """Bytes counted per node for the calls running there, against its budget."""

    def __init__(self, slots: list[Slot], calls: dict[int, Call], clock: Clock, peaks: Peaks
                 ) -> None:
        self.slots = slots
        self.calls = calls
        self.clock = clock
        self.peaks = peaks
        self.mode: int | str | None = None
        """The open runs' ``memory_budget`` (the smallest given; "auto"; None: none)."""
        self.node_use: dict[str, int] = {}  # node -> bytes counted for its calls
        self.node_calls: dict[str, int] = {}  # node -> slots with calls there
        self.node_alone: dict[str, int] = {}  # node -> slots running an exclusive call
        self.readings: dict[str, NodeMemory] = {}  # a node's memory when none of ours ran
        self.started_since: dict[str, int] = {}  # actors of ours started there since then
        self.settling: dict[str, set[int]] = {}  # node -> workers killed there, maybe alive
        self.awaiting: set[str] = set()  # nodes with an AwaitKilled question out
        self.learning: dict[str, FirstCall] = {}  # node -> its first call, run to learn
        self.provisional: dict[str, int] = {}  # node -> what that call settled at using
        self.questions: dict[int, Question] = {}
        self.freed: set[str] = set()
        """Nodes where a call held back may fit now (use fell, budget rose, a killed worker
        is gone): the scheduler looks at their waiting actors again."""
        self.freed_all = False
        """... every node (the runs' budgets changed, or a reading is due)."""

    def forget(self) -> None:
        """The actors get another function: what was being learned of the last is void."""
        self.questions.clear()
        self.awaiting.clear()
        self.learning.clear()
        self.provisional.clear()

    def note_node(self, node: NodeMemory | None) -> None:
        """An actor started on ``node``: its reading becomes the node's when none of our calls
        runs there (so the reading holds only memory in use outside them); else the actor
        is counted, to take its idle footprint off the budget."""
        if node is None:
            return
        if node.node not in self.readings or not self.node_use.get(node.node):
            self.readings[node.node] = node
            self.started_since[node.node] = 0
            self.freed.add(node.node)
        else:
            self.started_since[node.node] += 1

    def budget(self, slot: Slot) -> int | None:
        """Bytes the calls on ``slot``'s node may use together (None: no admission)."""
        mode = self.mode
        if mode is None or isinstance(mode, int):
            return mode
        node = slot.node
        if node is None:
            return None
        reading = self.readings.get(node.node, node)
        return max(0, reading.budget() - self.started_since.get(node.node, 0) * reading.worker)

    def reading(self, slot: Slot) -> NodeMemory | None:
        """What is known of ``slot``'s node's memory."""
        node = slot.node
        return None if node is None else self.readings.get(node.node, node)

    # -- a worker killed for memory ---------------------------------------------------------

    def killed(self, slot: Slot) -> None:
        """Ray killed the worker of ``slot`` for memory: nothing starts on its node until the
        process is gone."""
        node = slot.node
        if node is not None and node.pid:
            self.settling.setdefault(node.node, set()).add(node.pid)

    def await_killed(self, question: int, slot: Slot) -> AwaitKilled | None:
        """Ask ``slot``'s idle actor to wait until the workers killed for memory on its node
        are gone, unless one is asked already (None)."""
        key = slot.node_key()
        if key in self.awaiting:
            return None
        pids = frozenset(self.settling[key])
        self.awaiting.add(key)
        self.questions[question] = Question(slot.index, slot.actor, key, pids)
        return AwaitKilled(question, slot.index, slot.actor, tuple(sorted(pids)))

    def killed_gone(self, asked: Question, value: object) -> None:
        """The killed workers' processes are gone (or the actor asked died: another is asked
        when the node's next call looks)."""
        key = asked.node
        self.awaiting.discard(key)
        self.freed.add(key)
        if value is ACTOR_DIED:
            return
        left = self.settling.get(key, set()) - asked.pids
        if left:
            self.settling[key] = left
        else:
            self.settling.pop(key, None)
        if isinstance(value, NodeMemory) and not self.node_use.get(key):
            self.readings[key] = value  # its memory now, with every actor of ours started
            self.started_since[key] = 0

    # -- what a call is counted for ----------------------------------------------------------

    def need(self, run: Run, head: Item | None, budget: int, slot: Slot, question: int
             ) -> tuple[int | None, bool, ReadUsage | None]:
        """The memory counted for the next call of ``run`` on ``slot`` (``head``: the suspect
        row it will run alone) and whether it runs alone on its node; None with a
        :class:`ReadUsage` (as ``question``) when the slot's actor is taken to read its
        node's first call instead.

        The expected peak of the function's calls (the largest measured, or
        ``memory_per_call``); a row killed for memory takes the whole budget of its node;
        so does a call while nothing is known: one call per node runs first, to learn. A
        first call still running after :data:`LEARN_SECONDS` has its use read on the node
        by an idle actor, and the calls admitted beside it count that (a long call must
        not leave the node idle for its whole length)."""
        if head is not None and head[ROW] in run.memory_suspects:
            return budget, True, None
        expected = self.peaks.expected_peak()
        if expected is not None:
            return expected, False, None
        key = slot.node_key()
        first = self.learning.get(key)
        if first is None or not self.slots[first.slot].lane:  # no first call runs there:
            self.learning.pop(key, None)  # this is one, and its window starts with it
            self.provisional.pop(key, None)
            return budget, False, None
        if key in self.provisional:
            return self.provisional[key], False, None
        if first.asked or self.clock.monotonic() < first.due:
            return budget, False, None
        node = self.slots[first.slot].node
        if node is None or not node.pid:
            return budget, False, None
        self.questions[question] = Question(slot.index, slot.actor, key, idle=node.worker,
                                            reads_usage=True)
        first.asked = True
        return None, False, ReadUsage(question, slot.index, slot.actor, node.pid, first.mark)

    def first_call(self, slot: Slot) -> str:
        """The call about to start on ``slot`` while nothing is known: the mark it leaves
        when it is its node's first ("" otherwise)."""
        first = self.learning.get(slot.node_key())
        if first is None:
            first = self.learning[slot.node_key()] = FirstCall(
                slot.index, self.clock.monotonic() + LEARN_SECONDS)
        return first.mark if first.slot == slot.index else ""

    def usage(self, asked: Question, value: object) -> None:
        """What the first call on a node has used so far: the need counted for it and for
        each call admitted beside it, until a call's peak is known."""
        first = self.learning.get(asked.node)
        if first is not None:
            first.asked = False
        if value is ACTOR_DIED or first is None:
            return
        rss, cpu, asleep, started = cast("tuple[int, float, bool, bool]", value)
        now = self.clock.monotonic()
        if not started:  # not handed to its worker yet (a loaded machine), or between calls
            first.seen, first.due = -1, now + SAMPLE_SECONDS
            return
        used = max(0, int(rss) - asked.idle)  # less the worker's own footprint
        still = first.seen >= 0 and used <= first.seen + max(first.seen // 20, STILL_BYTES)
        if not still or not (asleep or cpu - first.cpu >= WORKED_SECONDS):
            # growing, read once, or starved of CPU meanwhile (a loaded machine): read again
            first.seen, first.cpu = max(used, first.seen), float(cpu)
            first.due = now + SAMPLE_SECONDS
            return
        key = asked.node
        self.provisional[key] = used = max(used, first.seen)
        self.freed.add(key)
        for call in list(self.calls.values()):  # the first call: what it uses so far
            if not call.exclusive and call.need > used and \
                    self.slots[call.slot].need_node == key:
                call.need = used
                self.count(self.slots[call.slot])

    def next_reading(self, now: float) -> float | None:
        """When a node's first call is read next (None: no reading is due)."""
        if not self.learning or self.peaks.expected_peak() is not None:
            return None
        times = [first.due for node, first in self.learning.items()
                 if node not in self.provisional and not first.asked and first.due > now]
        return min(times) if times else None

    # -- counting -------------------------------------------------------------------------

    def admits(self, slot: Slot, need: int, budget: int) -> bool:
        """Whether a call needing ``need`` fits beside the calls running on ``slot``'s node.
        A call alone on its node always runs (nothing better can be done for it)."""
        key = slot.need_node if slot.counted else slot.node_key()
        others = self.node_use.get(key, 0) - slot.need
        return others <= 0 or others + max(slot.need, need) <= budget

    def apart(self, slot: Slot, exclusive: bool) -> bool:
        """Whether a call may start on ``slot``'s node as far as exclusive calls go: an
        ``exclusive`` one only alone there, and none beside one, whatever the budget (a
        budget of 0 counts such a call 0 bytes: bytes cannot say "alone")."""
        key = slot.need_node if slot.counted else slot.node_key()
        if self.node_alone.get(key, 0) - slot.alone > 0:
            return False
        return not exclusive or self.node_calls.get(key, 0) - slot.counted <= 0

    def count(self, slot: Slot) -> None:
        """Count the calls on ``slot`` on its node: that it has some, whether one is
        exclusive, and their memory (the largest: they run one by one)."""
        calls, lane = self.calls, slot.lane
        key = slot.need_node
        if lane and not slot.counted:
            key = slot.need_node = slot.node_key()
            self.node_calls[key] = self.node_calls.get(key, 0) + 1
            slot.counted = True
        if len(lane) == 1:  # (the common case, without a generator's cost)
            only = calls[lane[0]]
            need, alone = only.need, only.exclusive
        else:
            need = max((calls[call].need for call in lane), default=0)
            alone = any(calls[call].exclusive for call in lane)
        if need != slot.need:
            self.node_use[key] = self.node_use.get(key, 0) + need - slot.need
            if need < slot.need:
                self.freed.add(key)
            slot.need = need
        if alone != slot.alone:
            self.node_alone[key] = self.node_alone.get(key, 0) + (1 if alone else -1)
            if not alone:
                self.freed.add(key)
            slot.alone = alone
        if not lane and slot.counted:
            self.node_calls[key] -= 1
            slot.counted = False
            if not self.node_calls[key]:
                self.freed.add(key)  # an exclusive call may start there now
