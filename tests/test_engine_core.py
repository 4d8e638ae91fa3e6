"""The scheduling core on its own: events in, commands out, a clock of our own (no Ray)."""

from __future__ import annotations

from typing import Any

from thread_chunks._actor import Item, NodeMemory, Outcome
from thread_chunks._actor import Replied as Reply
from thread_chunks._engine.core import Scheduler
from thread_chunks._engine.run import Policy, Run, RunStats
from thread_chunks._engine.vocabulary import (
    Closed,
    Command,
    Died,
    Handed,
    Kill,
    Opened,
    Placed,
    Probe,
    Reloaded,
    Replied,
    Send,
    Tick,
)
from thread_chunks._errors import WorkerDiedError
from thread_chunks._progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_000_000.0 + self.now


class Peaks:
    def __init__(self, peak: int | None = None) -> None:
        self.peak = peak

    def expected_peak(self) -> int | None:
        return self.peak

    def learn_peak(self, peak: int) -> None:
        self.peak = max(peak, self.peak or 0)


def scheduler(size: int, clock: FakeClock | None = None) -> Scheduler:
    return Scheduler(size, owned=True, clock=clock or FakeClock(), peaks=Peaks(),
                     describe_wait=lambda: "the test cluster")


def a_run(rows: int, **policy: Any) -> Run:
    items: list[Item] = [(i, (i,), None) for i in range(rows)]
    return Run(iter(items), ordered=True, batch_size=1, progress=Progress(False, rows),
               store=None, policy=Policy(memory_budget=None, **policy), stats=RunStats(),
               name="square")


def reply(send: Send) -> Replied:
    """What the actor answers to ``send``: the squares of its rows."""
    batch = send.batch
    outcomes: list[Outcome] = [(item[0], True, item[1][0] ** 2, 0.0, 0.0, "", None)
                               for item in batch]
    return Replied(send.call, Reply(outcomes, True, 8 * len(batch), 0, 0.001, 0.001))


NODE = NodeMemory("node-a", 16 << 30, 1 << 30, 0.95, 100 << 20, 1234)


def sends(commands: list[Command]) -> list[Send]:
    return [command for command in commands if isinstance(command, Send)]


def test_a_run_goes_from_probes_to_calls_to_outcomes_in_order() -> None:
    core = scheduler(2)
    run = a_run(5)
    probes = core.handle(Opened(run))
    assert probes == [Probe(0, 1), Probe(1, 1)]
    in_flight = sends(core.handle(Placed(0, 1, NODE))) + sends(core.handle(Placed(1, 1, NODE)))
    assert [send.slot for send in in_flight] == [0, 1]
    handed: list[Outcome] = []
    while in_flight:
        send = in_flight.pop(0)
        in_flight += sends(core.handle(reply(send)))
        out = run.to_hand_out()
        assert out is not None
        handed += out
        core.handle(Handed(run, len(out)))
    assert [record[0] for record in handed] == [0, 1, 2, 3, 4]
    assert [record[2] for record in handed] == [0, 1, 4, 9, 16]
    assert run.to_hand_out() is None  # done
    assert core.busy == 0 and not core.calls
    core.handle(Closed(run))
    assert run.stats.calls == 5


def test_at_most_one_call_per_actor_and_none_to_an_actor_not_placed() -> None:
    core = scheduler(3)
    run = a_run(10)
    core.handle(Opened(run))
    first = sends(core.handle(Placed(1, 1, NODE)))
    assert [send.slot for send in first] == [1]
    assert core.busy == 1 and run.inflight_calls == 1


def test_a_timeout_kills_the_actor_fails_the_row_and_asks_for_a_new_actor() -> None:
    clock = FakeClock()
    core = scheduler(1, clock)
    run = a_run(1, timeout=5.0)
    core.handle(Opened(run))
    [send] = sends(core.handle(Placed(0, 1, NODE)))
    assert core.deadline() == clock.now + 5.0
    clock.now += 5.0
    commands = core.handle(Tick())
    assert Kill(0, 1) in commands and Probe(0, 2) in commands
    [outcome] = run.to_hand_out() or []
    assert outcome[0] == 0 and not outcome[1] and isinstance(outcome[2], TimeoutError)
    assert core.deadline() == clock.now + 10.0  # only the new actor's placement notice
    assert core.handle(reply(send)) == []  # its late reply is ignored


def test_a_timeout_on_a_user_actor_fails_the_row_once_and_that_actor_waits_for_its_call(
) -> None:
    clock = FakeClock()
    core = Scheduler(2, owned=False, clock=clock, peaks=Peaks(),
                     describe_wait=lambda: "the test cluster")
    run = a_run(3, timeout=5.0)
    core.handle(Opened(run))
    [first] = sends(core.handle(Placed(0, 1, NODE)))
    clock.now += 1.0
    [second] = sends(core.handle(Placed(1, 1, NODE)))
    clock.now += 4.0  # the first call runs 5 s: its timeout; the actor cannot be killed
    commands = core.handle(Tick())
    assert not any(isinstance(c, (Kill, Probe, Send)) for c in commands)
    [outcome] = run.to_hand_out() or []
    assert outcome[0] == 0 and isinstance(outcome[2], TimeoutError)
    assert run.stats.worker_deaths == 0 and run.inflight_calls == 1
    core.handle(Handed(run, 1))
    assert core.deadline() == clock.now + 1.0  # the second call's, counted from its start
    [third] = sends(core.handle(reply(second)))  # row 2 goes to the free actor, not slot 0
    assert third.slot == 1 and [item[0] for item in third.batch] == [2]
    assert sends(core.handle(reply(first))) == []  # its late reply is dropped
    core.handle(reply(third))
    out = run.to_hand_out() or []
    assert [record[0] for record in out] == [1, 2] and [record[2] for record in out] == [1, 4]
    core.handle(Handed(run, 2))
    assert run.to_hand_out() is None and run.stats.calls == 3 and run.stats.failures == 1
    assert core.busy == 0 and not core.calls


def test_a_death_is_charged_to_its_row_which_runs_again_on_a_new_actor() -> None:
    core = scheduler(1)
    run = a_run(1, max_worker_deaths=2)
    core.handle(Opened(run))
    [send] = sends(core.handle(Placed(0, 1, NODE)))
    commands = core.handle(Died(send.call, RuntimeError("gone"), memory=False, used=0))
    assert commands == [Kill(0, 1), Probe(0, 2)]
    assert core.handle(Placed(0, 1, NODE)) == []  # the dead incarnation: ignored
    [again] = sends(core.handle(Placed(0, 2, NODE)))
    assert again.batch == send.batch and again.actor == 2
    core.handle(Died(again.call, RuntimeError("gone again"), memory=False, used=0))
    [outcome] = run.to_hand_out() or []
    assert isinstance(outcome[2], WorkerDiedError) and run.stats.worker_deaths == 2


def test_closing_a_run_kills_only_the_actors_running_nothing_but_its_calls() -> None:
    core = scheduler(2)
    mine, theirs = a_run(10), a_run(10)
    core.handle(Opened(mine))
    core.handle(Opened(theirs))
    calls = sends(core.handle(Placed(0, 1, NODE))) + sends(core.handle(Placed(1, 1, NODE)))
    assert {send.run for send in calls} == {mine, theirs}
    mine_slot = next(send.slot for send in calls if send.run is mine)
    commands = core.handle(Closed(mine))
    assert Kill(mine_slot, 1) in commands
    assert not any(isinstance(c, Kill) and c.slot != mine_slot for c in commands)


def test_the_default_read_ahead_is_bounded_at_large_pools() -> None:
    small, large = a_run(1), a_run(1)
    small.opened(8)
    large.opened(10_000)
    assert small.bound() == 4 * 8  # unchanged up to 32 actors
    assert large.bound() == 2 * 10_000 + 64


def test_calls_beyond_a_nodes_memory_wait_and_start_as_calls_there_end() -> None:
    node = NodeMemory("node-b", 10 << 30, 0, 1.0, 0, 99)  # a budget of 9.5 GiB for calls
    core = Scheduler(6, owned=True, clock=FakeClock(), peaks=Peaks(3 << 30),
                     describe_wait=lambda: "the test cluster")
    run = a_run(12)
    object.__setattr__(run.policy, "memory_budget", "auto")
    core.handle(Opened(run))
    in_flight: list[Send] = []
    for slot in range(6):
        in_flight += sends(core.handle(Placed(slot, 1, node)))
    assert len(in_flight) == 3  # 3 calls of 3 GiB fit, the other actors wait
    assert core.admission.node_use["node-b"] == 9 << 30
    done = 0
    while in_flight:
        commands = core.handle(reply(in_flight.pop(0)))
        in_flight += sends(commands)
        done += 1
        # three actors busy at most (a short call may have a second queued behind it)
        assert core.busy <= 3 and core.admission.node_use.get("node-b", 0) <= 9 << 30
        out = run.to_hand_out()
        if out:
            core.handle(Handed(run, len(out)))
    assert done == 12 and run.stats.calls == 12


def test_another_function_makes_every_actor_be_probed_again() -> None:
    core = scheduler(2)
    first = a_run(1)
    core.handle(Opened(first))
    [send] = sends(core.handle(Placed(0, 1, NODE)))
    core.handle(reply(send))
    core.handle(Closed(first))
    again = core.handle(Opened(a_run(1)))  # slot 0 is ready, slot 1's probe is out
    assert [(type(c), c.slot) for c in again] == [(Send, 0)]
    core.handle(Closed(core.runs[0]))
    assert core.handle(Reloaded()) == []
    # slot 0's actor was killed when the second run closed with its call running there
    assert core.handle(Opened(a_run(1))) == [Probe(0, 2), Probe(1, 1)]
