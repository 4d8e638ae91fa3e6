"""One record per actor slot, owned by the core: what runs there, since when, where, and
whether its actor is ready; and one record per call in flight."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._actor import Item, NodeMemory

if TYPE_CHECKING:
    from .run import Run


@dataclass(slots=True, eq=False)
class Call:
    """One actor call in flight: whose it is, where, and what it holds."""

    id: int
    run: Run
    slot: int
    actor: int
    batch: list[Item]
    need: int = 0
    """Memory counted for it on its node while it runs (bytes; see ``Admission.need``)."""
    exclusive: bool = False
    """It runs alone on its node (a row killed for memory, run again)."""
    orphaned: bool = False
    """Its run has ended: the call is left to finish (or its actor was killed) and its
    outcome is dropped when it comes."""
    detached: bool = False
    """... or its run was told it is over though it still runs: it timed out (or waited
    behind one that did) on an actor handed in by the user, which is never killed."""
    measures: bool = True
    """Its reply's peak is what the current function's calls use (False once the actors
    were given another function while it ran)."""


@dataclass(slots=True, eq=False)
class Slot:
    """One actor slot of the pool."""

    index: int
    actor: int = 1
    """The incarnation of its actor (a new number once the actor is killed or died)."""
    ready: bool = False
    """Its actor has started and holds the current function: calls may go there."""
    probing: bool = False
    """A :class:`~.vocabulary.Probe` for the current incarnation is out."""
    retired: bool = False
    """Not used for the rest of the runs open now (a worker was killed for memory)."""
    isolated: bool = False
    """It runs a suspect row: nothing is queued behind it."""
    lane: deque[int] = field(default_factory=deque)
    """Ids of the calls on its actor, the running one first."""
    running: int = 0
    """The id of the call running first in ``lane`` (0: none); the timeouts check it
    without reaching into the lane."""
    running_since: float = 0.0
    """When the first call of ``lane`` started (as far as the core knows)."""
    node: NodeMemory | None = None
    """Its actor's node as its probe read it (None: not known)."""
    need: int = 0
    """Memory counted for its calls on node ``need_node`` (the largest of them)."""
    need_node: str = ""
    counted: bool = False
    """Its calls are counted on node ``need_node`` (it has some)."""
    alone: bool = False
    """... and one of them is exclusive (nothing else starts on that node)."""
    start_failures: int = 0
    """Its actors that died in a row before starting."""

    def node_key(self) -> str:
        """The name of its node for memory accounting (unknown nodes are one per slot)."""
        node = self.node
        return f"?{self.index}" if node is None else node.node


def actor_label(slot: int) -> str:
    """The name of a slot's actor in the statistics and the checkpoint."""
    return f"actor-{slot}"
