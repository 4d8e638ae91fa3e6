"""The scheduling core (:class:`Scheduler`): every run open on one pool of actor slots,
without Ray. Events in (:mod:`.vocabulary`), commands out; whoever drives it carries them out.
"""

from __future__ import annotations

from collections.abc import Callable

from .vocabulary import Clock, Command, Event, Peaks


class Scheduler:
    """The calls on one pool's ``size`` actor slots, for every run open on it.

    ``owned``: the actors are ours to kill and replace (False: handed in by the user);
    ``peaks``: what calls of the current function are known to need; ``memory_per_call``:
    what the user said a call needs; ``describe_wait``: what the cluster has, for the
    messages about actors that cannot be placed."""

    def __init__(self, size: int, *, owned: bool, clock: Clock, peaks: Peaks,
                 memory_per_call: int | None, describe_wait: Callable[[], str]) -> None:
        self.size = size
        self.owned = owned
        self.clock = clock
        self.peaks = peaks
        self.memory_per_call = memory_per_call
        self.describe_wait = describe_wait

    def handle(self, event: Event) -> list[Command]:
        """Take ``event``; what is to be done now, in order."""
        raise NotImplementedError(type(event).__name__)

    def deadline(self) -> float | None:
        """When something must happen even if nothing is heard (``clock.monotonic()``
        seconds; None: nothing is due); then hand in :class:`~.vocabulary.Tick`."""
        return None
