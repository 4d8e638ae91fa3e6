"""What a dead worker means for the rows it held (one :class:`Verdict`), and the calls'
timeouts (a heap of deadlines, checked lazily: no scan of every actor)."""

from __future__ import annotations

import enum
import heapq
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
    """The deadlines of the running calls that have a timeout, earliest first. An entry is
    ``(deadline, slot, call)``; it is stale once that call no longer runs first on its slot
    (finished, or its actor gone), and stale entries are dropped as they come up."""

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = slots
        self.heap: list[tuple[float, int, int]] = []
        self.live = 0
        """Entries live at the last compaction (the heap is compacted at twice as many)."""

    def started(self, deadline: float, slot: int, call: int) -> None:
        """``call`` started running first on ``slot``: it must end by ``deadline``."""
        heap = self.heap
        if len(heap) > 2 * self.live + 64:  # mostly calls that ended: keep the live ones
            heap[:] = [entry for entry in heap if _runs(self.slots[entry[1]], entry[2])]
            heapq.heapify(heap)
            self.live = len(heap)
        heapq.heappush(heap, (deadline, slot, call))

    def next(self, slots: list[Slot]) -> float | None:
        """The earliest live deadline."""
        heap = self.heap
        while heap and not _runs(slots[heap[0][1]], heap[0][2]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def due(self, now: float, slots: list[Slot]) -> list[tuple[int, int]]:
        """``(slot, call)`` of the live calls past their deadline at ``now`` (taken off)."""
        out: list[tuple[int, int]] = []
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, slot, call = heapq.heappop(heap)
            if _runs(slots[slot], call):
                out.append((slot, call))
        return out


def _runs(slot: Slot, call: int) -> bool:
    """Whether ``call`` runs first on ``slot``."""
    lane = slot.lane
    return bool(lane) and lane[0] == call
