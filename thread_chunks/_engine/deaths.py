"""What a dead worker means for the rows it held (one :class:`Verdict`), and the calls'
timeouts (a queue of deadlines per timeout: no scan of every actor)."""

from __future__ import annotations

import enum
from collections import deque
from typing import TYPE_CHECKING

from .._actor import ROW, Item, NodeMemory
from .slots import Slot

if TYPE_CHECKING:
    from .run import Run

INNOCENT_USE = 128 << 20
"""A worker Ray killed for memory while using at most this much above an idle actor's
footprint was killed beside the one that used it (Ray kills several at once, and the newest
first): its rows are run again uncharged."""


class Verdict(enum.Enum):
    """What the rows of one run held by a dead worker get."""

    CHARGED = "charged"
    """A death (no memory admission): the one row it held is charged, or each runs alone."""
    INNOCENT = "innocent"
    """Killed for memory it barely used, beside the worker that used it: run again."""
    EXCEEDS_NODE = "exceeds node"
    """Killed for memory while alone on its node, using what the node can give: it fails."""
    MEMORY_KILL = "memory kill"
    """Killed for memory: each row runs again alone on its node."""


def judge(run: Run, held: list[Item], *, memory: bool, budget: int | None, used: int,
          reading: NodeMemory | None, alone: bool, exclusive: bool) -> Verdict:
    """The verdict for ``held``, the rows of ``run`` on a worker that died. ``memory``: Ray
    killed it for memory, using ``used`` bytes (0: unknown); ``budget``: its node's budget
    (None: no memory admission); ``alone``: it held one call of one row; ``exclusive``:
    that call ran alone on its node."""
    if budget is None:
        return Verdict.CHARGED
    idle = 0 if reading is None else reading.worker
    if memory and 0 < used <= idle + INNOCENT_USE:
        return Verdict.INNOCENT
    if alone and exclusive and exceeds_node(run, held[0], used, budget, reading):
        return Verdict.EXCEEDS_NODE
    return Verdict.MEMORY_KILL


def exceeds_node(run: Run, item: Item, used: int, budget: int, node: NodeMemory | None
                 ) -> bool:
    """Whether a row killed for memory while alone on its node is beyond the node: it used
    what the node can give a call at all (up to Ray's threshold, less what was in use outside
    our calls: the budget's margin included), or it was killed ``max_worker_deaths`` times.
    A row killed alone using less is run again: Ray kills by the time calls started, so a row
    that starts while memory of a worker killed a moment before is still held, or while
    something else on the node grows, may be killed though it fits."""
    kills = run.memory_kills.get(item[ROW], 0) + 1
    most = budget if node is None else max(budget, int(
        node.threshold * node.total) - node.used)
    return used >= most or kills >= run.policy.max_worker_deaths


class Timeouts:
    """The deadlines of the running calls that have a timeout, in deadline order with no
    heap and no scan: calls with the same timeout start in time order, so one queue per
    timeout (a handful: the open runs') is in deadline order, and the earliest deadline is at
    the head of one of them. An entry is ``(deadline, slot, call)``; it is stale once that
    call no longer runs first on its slot, and stale entries are dropped as they reach the
    head (and all at once when they are most of a queue). Every step is O(1) at any pool
    size, and touches only a queue's ends (a heap's sifting reaches into it)."""

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = slots
        self.queues: dict[float, deque[tuple[float, int, int]]] = {}
        self.live: dict[float, int] = {}
        """Timeout -> entries live at its queue's last compaction."""

    def started(self, now: float, timeout: float, slot: int, call: int) -> None:
        """``call`` started running first on ``slot`` at ``now`` (never earlier than the
        last call started): it must end within ``timeout``."""
        queue = self.queues.get(timeout)
        if queue is None:
            queue = self.queues[timeout] = deque()
            self.live[timeout] = 0
        elif len(queue) > 2 * self.live[timeout] + 64:  # mostly calls that ended
            slots = self.slots
            kept = [entry for entry in queue if _runs(slots[entry[1]], entry[2])]
            queue.clear()
            queue.extend(kept)
            self.live[timeout] = len(kept)
        queue.append((now + timeout, slot, call))

    def next(self) -> float | None:
        """The earliest live deadline."""
        found: float | None = None
        slots = self.slots
        for timeout, queue in list(self.queues.items()):
            while queue and not _runs(slots[queue[0][1]], queue[0][2]):
                queue.popleft()
            if not queue:
                del self.queues[timeout], self.live[timeout]
            elif found is None or queue[0][0] < found:
                found = queue[0][0]
        return found

    def due(self, now: float) -> list[tuple[int, int]]:
        """``(slot, call)`` of the live calls past their deadline at ``now``, earliest first
        (taken off)."""
        out: list[tuple[float, int, int]] = []
        slots = self.slots
        for queue in self.queues.values():
            while queue and queue[0][0] <= now:
                entry = queue.popleft()
                if _runs(slots[entry[1]], entry[2]):
                    out.append(entry)
        out.sort()
        return [(slot, call) for _, slot, call in out]


def _runs(slot: Slot, call: int) -> bool:
    """Whether ``call`` runs first on ``slot``."""
    return slot.running == call
