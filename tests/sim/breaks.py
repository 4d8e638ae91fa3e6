"""The scheduling core broken on purpose, once per invariant: the simulator must catch each
(tests/test_sim.py). Each is the real Scheduler with one mistake a change could make."""

from __future__ import annotations

from thread_chunks._actor import Item
from thread_chunks._engine.core import Scheduler
from thread_chunks._engine.run import Run
from thread_chunks._engine.slots import Slot
from thread_chunks._engine.vocabulary import (
    Clock,
    Closed,
    Command,
    Died,
    Event,
    Kill,
    Replied,
)

from .scenario import Scenario
from .world import MakeCore, SimPeaks


def _core(cls: type[Scheduler], extra: int = 0) -> MakeCore:
    def make(scenario: Scenario, clock: Clock, peaks: SimPeaks) -> Scheduler:
        return cls(scenario.size + extra, owned=True, clock=clock, peaks=peaks,
                   describe_wait=lambda: "a simulated cluster")
    return make


class NeverKills(Scheduler):
    """1: the actor of a closed run's call is replaced but not killed: it goes on running
    that call beside the new actor of its slot."""

    def handle(self, event: Event) -> list[Command]:
        out = super().handle(event)
        if isinstance(event, Closed):
            return [command for command in out if not isinstance(command, Kill)]
        return out


class HandsTwice(Scheduler):
    """2: the first row of every fifth reply is delivered to its run twice."""

    def replied(self, event: Replied) -> None:
        call = self.calls.get(event.call)
        super().replied(event)
        if call is not None and not call.orphaned and event.call % 5 == 0:
            call.run.deliver(event.reply.outcomes[:1], "again")


class ChargesAnother(Scheduler):
    """3: a death is also charged to another open run."""

    def died(self, event: Died) -> None:
        call = self.calls.get(event.call)
        super().died(event)
        if call is not None:
            for run in self.runs:
                if run is not call.run:
                    run.charge_death([], event.error, False)
                    return


class IgnoresBudget(Scheduler):
    """4: every call is admitted on its node, whatever the node's budget."""

    def __init__(self, size: int, **kwargs: object) -> None:
        super().__init__(size, **kwargs)  # type: ignore[arg-type]
        self.admission.admits = lambda slot, need, budget: True  # type: ignore[method-assign]


class ForgetsRun(Scheduler):
    """5: a run opened while another is open is never given an actor."""

    def open(self, run: Run) -> None:
        if self.runs:
            run.opened(self.size)
            return
        super().open(run)


class TimesFromSend(Scheduler):
    """6: a call queued behind another has its timeout counted from its send."""

    def send(self, run: Run, slot: Slot, batch: list[Item], need: int, exclusive: bool,
             mark: str) -> None:
        queued = bool(slot.lane)
        super().send(run, slot, batch, need, exclusive, mark)
        timeout = run.policy.timeout
        if queued and timeout is not None:
            self.timeouts.started(self.clock.monotonic(), timeout, slot.index,
                                  slot.lane[-1])


BROKEN: dict[str, tuple[int, MakeCore, int]] = {
    "one slot too many": (1, _core(Scheduler, extra=1), 200),  # a Scheduler of size + 1
    "never kills": (1, _core(NeverKills), 1000),
    "hands a row twice": (2, _core(HandsTwice), 200),
    "charges another run": (3, _core(ChargesAnother), 500),
    "ignores the budget": (4, _core(IgnoresBudget), 500),
    "forgets a run": (5, _core(ForgetsRun), 500),
    "times from the send": (6, _core(TimesFromSend), 3000),
}
"""What is broken -> (the invariant that must catch it, the broken core, how many seeds may
run before it is caught)."""
