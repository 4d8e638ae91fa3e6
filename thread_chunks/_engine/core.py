"""The scheduling core (:class:`Scheduler`): every run open on one pool of actor slots,
without Ray. Events in (:mod:`.vocabulary`), commands out; whoever drives it carries them out.

The scheduler owns what belongs to the pool: one :class:`~.slots.Slot` record per actor slot
(its calls, readiness, node), the calls in flight, placement (:mod:`.placement`), memory
admission (:mod:`.admission`), deaths and timeouts (:mod:`.deaths`); free actors go to the open
runs in turn (round-robin). A :class:`~.run.Run` owns what is its own (its input, retries,
ordered release, checkpoint, progress, statistics) and changes only through its methods.

Work per event is independent of the pool's size: free actors are kept as tokens (one per call
an actor may take, checked when taken), deadlines in one queue per timeout value
(:class:`~.deaths.Timeouts`), counts as counters.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable

from .._actor import Item
from .._errors import ConcurrencyReducedWarning, ThreadChunksError, WorkerDiedError, warn_user
from .admission import Admission
from .deaths import Timeouts, Verdict, judge
from .placement import Placement
from .run import Run
from .slots import Call, Slot, actor_label
from .vocabulary import (
    ACTOR_DIED,
    Answered,
    Broken,
    CallFailed,
    Clock,
    Closed,
    Command,
    Died,
    Event,
    Handed,
    Kill,
    Opened,
    Peaks,
    Placed,
    Probe,
    Reloaded,
    Replied,
    Send,
    StartFailed,
    Tick,
)

_SENT, _DROPPED, _PARKED, _AGAIN, _STOP = (object() for _ in range(5))
"""What became of a token offered to the runs (see :meth:`Scheduler.offer`)."""
START_FAILURES = 3
"""A slot whose new actors die this many times in a row before starting fails the runs."""


class Scheduler:
    """The calls on one pool's ``size`` actor slots, for every run open on it.

    ``owned``: the actors are ours to kill and replace (False: handed in by the user);
    ``peaks``: what calls of the current function are expected to need (``memory_per_call``
    until one is measured); ``describe_wait``: what the cluster has, for the messages about
    actors that cannot be placed."""

    def __init__(self, size: int, *, owned: bool, clock: Clock, peaks: Peaks,
                 describe_wait: Callable[[], str]) -> None:
        self.size = size
        self.owned = owned
        self.clock = clock
        self.peaks = peaks
        self.slots = [Slot(index) for index in range(size)]
        self.calls: dict[int, Call] = {}
        self.runs: deque[Run] = deque()  # open runs; the head has the next turn
        self.tokens: deque[int] = deque()  # one per call an actor may take (checked lazily)
        self.parked: dict[str, deque[int]] = {}  # node -> tokens held back there (memory)
        self.draining: dict[int, str] = {}  # tokens taken off a node's parked ones, in line
        self.unqueued: list[int] = []  # tokens of a queue place no run could use
        self.peak_seen: int | None = None  # the expected peak when tokens were parked
        self.ids = itertools.count(1)  # of calls and questions
        self.ready = 0  # slots whose actor is ready
        self.active = 0  # ... and not retired
        self.busy = 0  # slots with a call
        self.retired: list[int] = []  # slots not used until no run is open
        self.pipelining = False  # a second call may wait on each actor
        self.timed = False  # an open run has a timeout
        self.placement = Placement(clock.monotonic(), describe_wait)
        self.admission = Admission(self.slots, self.calls, clock, peaks)
        self.timeouts = Timeouts(self.slots)
        self.out: list[Command] = []

    # -- events ----------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Command]:
        """Take ``event``; what is to be done now, in order."""
        out = self.out = []
        if isinstance(event, Replied):
            self.replied(event)
        elif isinstance(event, Handed):
            event.run.handed_out(event.n)
        elif isinstance(event, Placed):
            self.placed(event)
        elif isinstance(event, Died):
            self.died(event)
        elif isinstance(event, CallFailed):
            call = self.calls.get(event.call)
            if call is not None:
                self.release(call)
                if not call.orphaned:
                    call.run.fail(event.error)
        elif isinstance(event, Answered):
            self.answered(event)
        elif isinstance(event, Tick):
            self.admission.freed_all = True  # (a first call's reading may be due)
            self.on_time()
        elif isinstance(event, StartFailed):
            self.start_failed(event)
        elif isinstance(event, Opened):
            self.open(event.run)
        elif isinstance(event, Closed):
            self.close(event.run)
        elif isinstance(event, Reloaded):
            self.reload()
        elif isinstance(event, Broken):
            self.broken(event.error)
        if self.runs:
            self.fill()
        return out

    def deadline(self) -> float | None:
        """When something must happen even if nothing is heard (``clock.monotonic()``
        seconds; None: nothing is due); then hand in :class:`~.vocabulary.Tick`."""
        found = self.timeouts.next() if self.timed else None
        if self.runs:
            for due in (self.placement.deadline(self.active),
                        self.admission.next_reading(self.clock.monotonic())):
                if due is not None and (found is None or due < found):
                    found = due
        return found

    def name(self) -> str:
        """What the open runs run, for messages."""
        return self.runs[0].name if self.runs else "function"

    # -- runs ------------------------------------------------------------------------------

    def open(self, run: Run) -> None:
        """Serve ``run`` from now on: it takes its turn for free actors."""
        run.opened(self.size)
        if not self.runs:  # the first run after a pause: a fresh view of the actors
            for index in self.retired:
                self.slots[index].retired = False
                self.active += self.slots[index].ready
            self.retired.clear()
            self.placement.reopen(self.clock.monotonic(), self.ready > 0)
        self.runs.append(run)
        self.runs_changed()
        if self.ready + len(self.placement.waiting) + len(self.retired) < self.size:
            waiting = self.placement.waiting
            for slot in self.slots:
                if not slot.ready and not slot.retired and slot.index not in waiting:
                    self.enlist(slot)

    def close(self, run: Run) -> None:
        """``run`` ended (done, failed, closed early or cancelled): stop its calls only.

        Its calls are stopped by killing their actor when every call on that actor is the
        run's own; else they are left to finish (a queued one is short: only short calls are
        queued) and their outcomes dropped. (Cancelling a queued actor task leaves a gap in
        Ray's per-caller order of calls to that actor, which then stalls and fails every call
        queued on it, another run's included.) Calls of other runs are never touched."""
        if run in self.runs:
            self.runs.remove(run)
            self.runs_changed()
        run.ended(self.size - len(self.retired))
        mine = [call for call in self.calls.values() if call.run is run]
        for call in mine:
            call.orphaned = True
        for index in {call.slot for call in mine}:
            self.stop_orphans(self.slots[index])

    def runs_changed(self) -> None:
        runs = self.runs
        self.timed = any(run.policy.timeout is not None for run in runs)
        budgets = [run.policy.memory_budget for run in runs]
        given = [b for b in budgets if isinstance(b, int)]
        self.admission.mode = min(given) if given else ("auto" if "auto" in budgets else None)
        self.admission.freed_all = True
        self.placement.runs_changed(runs)

    def stop_orphans(self, slot: Slot) -> None:
        """Stop the calls on ``slot`` whose runs ended, by killing the actor (ours) when no
        other run has a call there."""
        calls = [self.calls[call] for call in slot.lane]
        if calls and all(call.orphaned for call in calls) and self.owned:
            for call in calls:
                self.release(call)
            self.lose(slot, calls[0].actor)  # killed: a fresh actor when a run needs it

    def broken(self, error: BaseException) -> None:
        """The pool cannot go on: every open run fails with ``error``."""
        for run in tuple(self.runs):
            run.fail(error)

    def reload(self) -> None:
        """The actors are to hold another function: none is ready until probed again."""
        for call in self.calls.values():
            call.measures = False  # a call left running measures the last function
        for slot in self.slots:
            slot.ready = slot.probing = False
        self.ready = self.active = 0
        self.placement.waiting.clear()
        self.admission.forget()
        self.tokens.clear()
        self.parked.clear()
        self.draining.clear()
        self.unqueued.clear()

    # -- actors ----------------------------------------------------------------------------

    def enlist(self, slot: Slot) -> None:
        """Use ``slot``'s actor (made if needed) as soon as it is ready: at once when it is
        known to be, else when its probe answers. Rows never wait on an unready actor."""
        if slot.ready:
            self.mark_ready(slot)
            return
        if not slot.probing:
            slot.probing = True
            self.out.append(Probe(slot.index, slot.actor))
        self.placement.waiting.setdefault(slot.index, self.clock.monotonic())

    def mark_ready(self, slot: Slot) -> None:
        if not slot.ready:
            slot.ready = True
            self.ready += 1
            self.active += not slot.retired
        self.placement.placed(slot.index, self.active, self.name(), self.runs)
        slot.start_failures = 0
        self.tokens.extend([slot.index] * (2 if self.pipelining else 1))

    def lose(self, slot: Slot, actor: int) -> None:
        """``slot``'s actor incarnation ``actor`` is gone (killed by us or dead): ask for a
        new one when a run is open (else the next run will). Actors handed in by the user
        are never killed: theirs stays."""
        if actor == slot.actor and self.owned:
            self.out.append(Kill(slot.index, actor))
            slot.actor += 1
            slot.probing = False
            slot.node = None
            if slot.ready:
                slot.ready = False
                self.ready -= 1
                self.active -= not slot.retired
        if not self.active and self.placement.stalled_since is None:
            self.placement.stalled_since = self.clock.monotonic()
        if not slot.retired and self.runs:
            self.enlist(slot)

    def placed(self, event: Placed) -> None:
        slot = self.slots[event.slot]
        if event.actor != slot.actor:
            return  # replaced meanwhile: the new one has its own probe
        slot.probing = False
        slot.node = event.node
        self.placement.waiting.pop(slot.index, None)
        self.admission.note_node(event.node)
        self.mark_ready(slot)

    def start_failed(self, event: StartFailed) -> None:
        slot = self.slots[event.slot]
        if event.actor != slot.actor:
            return
        slot.probing = False
        self.placement.waiting.pop(slot.index, None)
        error: BaseException | None = None
        if event.init_failed:
            error = ThreadChunksError(
                f"the actors could not start (creating the actor or loading "
                f"{self.name()!r} on it failed): {event.error}")
        elif not self.owned:
            error = WorkerDiedError(
                f"an actor handed in by the user died and cannot be replaced: {event.error}")
        else:
            slot.start_failures += 1
            if slot.start_failures >= START_FAILURES:
                error = ThreadChunksError(
                    f"actors for {self.name()!r} died {slot.start_failures} times in a row "
                    f"before starting; last cause: {event.error}")
        if error is not None:
            error.__cause__ = event.error
            self.broken(error)
            return
        self.lose(slot, event.actor)

    def shrink(self, slot: Slot) -> None:
        """A worker was killed for memory: one call fewer at once from now on (never 0)."""
        active = self.size - len(self.retired)
        if active <= 1 or slot.retired:
            return
        slot.retired = True
        self.retired.append(slot.index)
        self.active -= slot.ready
        warn_user(
            f"a worker running {self.name()!r} was killed for lack of memory; running "
            f"{active - 1} calls at once instead of {active} for the rest of this run",
            ConcurrencyReducedWarning)

    def answered(self, event: Answered) -> None:
        """An idle actor answered a question (see :mod:`.admission`); it is free again, or
        replaced when it died."""
        asked = self.admission.questions.pop(event.question, None)
        if asked is None:
            return
        slot = self.slots[asked.slot]
        current = slot.ready and slot.actor == asked.actor
        if event.value is ACTOR_DIED:
            if current:
                self.lose(slot, asked.actor)
        elif current and not slot.retired:
            self.tokens.append(slot.index)
        if asked.reads_usage:
            self.admission.usage(asked, event.value)
        else:
            self.admission.killed_gone(asked, event.value)

    # -- sending ---------------------------------------------------------------------------

    def next_run(self, queued: bool) -> Run | None:
        """The open run whose turn it is for a free actor (round-robin among those with
        work), moved to the back of the line. ``queued``: the call would wait behind another
        on its actor, which only runs of short calls do."""
        runs = self.runs
        for _ in range(len(runs)):
            run = runs[0]
            runs.rotate(-1)
            if run.has_work() and (not queued or run.batcher.pipelined):
                return run
        return None

    def fill(self) -> None:
        """Give every free actor a call of the run whose turn it is."""
        pipelined = any(run.batcher.pipelined for run in self.runs)
        if pipelined and not self.pipelining:  # a second token per actor: one call runs,
            self.tokens.extend(s.index for s in self.slots  # one waits
                               if s.ready and not s.retired)
        self.pipelining = pipelined
        capacity = 2 if pipelined else 1
        tokens, draining = self.tokens, self.draining
        self.unpark()
        while tokens:
            index = tokens.popleft()
            node = draining.pop(index, None) if draining else None
            taken = self.offer(index, capacity)
            if taken is _STOP or taken is _AGAIN:
                tokens.appendleft(index)
                if node is not None:
                    draining[index] = node
                if taken is _STOP:
                    break
            elif node is not None and taken is not _PARKED:
                self.drain(node)  # it did not find the node full: the next may fit too
        for run in self.runs:
            run.note_concurrency(self.busy)

    def offer(self, index: int, capacity: int) -> object:
        """Offer the free actor of token ``index`` to the run whose turn it is: a call sent
        (_SENT), the token dropped (_DROPPED: it comes back when the actor is free) or held
        back on its node (_PARKED), tried again with the next run (_AGAIN) or kept for later
        (_STOP: no run has work)."""
        slot = self.slots[index]
        lane = slot.lane
        if not slot.ready or slot.retired or len(lane) >= capacity or (lane and slot.isolated):
            return _DROPPED  # a token of an actor gone, not ready or busy (release gives it
        queued = bool(lane)  # back)
        if queued and not all(self.calls[c].run.batcher.pipelined for c in lane):
            return _DROPPED  # a long call runs there: nothing waits behind it
        run = self.next_run(queued)
        if run is None:
            if queued:
                self.unqueued.append(index)  # until a run of short calls has work
                return _DROPPED
            return _STOP
        admission = self.admission
        if admission.settling and slot.node_key() in admission.settling:
            if not queued:
                ask = admission.await_killed(next(self.ids), slot)
                if ask is not None:
                    self.out.append(ask)
                    return _DROPPED  # its token comes back with the answer
            return self.park(index, slot)  # memory of a killed worker: nothing starts there
        budget = admission.budget(slot)
        first = run
        while True:  # the run whose turn it is, then the next ones while a call of the run
            taken = self.offer_to(run, slot, budget, queued)  # cannot fit here (a row to
            if taken is not _PARKED:  # run alone): a token held back for one run must
                return taken  # still serve the others
            run = self.next_run(queued)
            if run is None or run is first:
                return self.park(index, slot)  # memory: it waits for calls there to end

    def offer_to(self, run: Run, slot: Slot, budget: int | None, queued: bool) -> object:
        """Send a call of ``run`` to ``slot``'s free actor (_SENT), unless it does not fit
        on its node (_PARKED) or must not wait behind the call there (_DROPPED)."""
        head = run.suspect_head()
        if head is not None and queued:
            return _DROPPED  # a suspect runs alone on its actor (release gives it back)
        admission = self.admission
        need, exclusive, mark = 0, False, ""
        if budget is not None:
            wanted, exclusive, read = admission.need(run, head, budget, slot, next(self.ids))
            if read is not None:
                self.out.append(read)
                return _DROPPED  # its actor reads the node's memory (its token comes back)
            need = wanted or 0
            if not (admission.apart(slot, exclusive) and admission.admits(slot, need, budget)):
                return _PARKED
            if self.peaks.expected_peak() is None:
                mark = admission.first_call(slot)
        if head is not None:
            batch = run.take_suspect()
            slot.isolated = True
        else:
            batch = run.take(run.batcher.size)
        if not batch:
            return _AGAIN  # that run had no work after all: next run
        self.send(run, slot, batch, need, exclusive, mark)
        return _SENT

    def park(self, index: int, slot: Slot) -> object:
        """Hold token ``index`` back on its node until a call may fit there."""
        node = slot.node_key()
        held = self.parked.get(node)
        if held is None:
            held = self.parked[node] = deque()
        held.append(index)
        return _PARKED

    def drain(self, node: str) -> None:
        """Put the first token held back on ``node`` in line; while the tokens so put in line
        find room, the next follows (no token is looked at twice for one full node)."""
        held = self.parked.get(node)
        if held is None:
            return
        index = held.popleft()
        if not held:
            del self.parked[node]
        self.draining[index] = node
        self.tokens.append(index)

    def unpark(self) -> None:
        """Tokens held back that may be used now go back in line: on each node where a call
        may fit now, the first (the rest follow while they find room); and the queue places
        once a run of short calls has work."""
        admission = self.admission
        peak = self.peaks.expected_peak()
        if peak != self.peak_seen:  # what a call is counted for changed
            self.peak_seen = peak
            admission.freed_all = True
        if self.parked:
            for node in list(self.parked) if admission.freed_all else admission.freed:
                self.drain(node)
        admission.freed.clear()
        admission.freed_all = False
        if self.unqueued and any(run.batcher.pipelined and run.has_work() for run in self.runs):
            self.tokens.extend(self.unqueued)
            self.unqueued.clear()

    def send(self, run: Run, slot: Slot, batch: list[Item], need: int, exclusive: bool,
             mark: str) -> None:
        call = next(self.ids)
        run.sending(batch)
        lane = slot.lane
        if not lane:
            now = slot.running_since = self.clock.monotonic()
            self.busy += 1
            if run.policy.timeout is not None:
                self.timeouts.started(now, run.policy.timeout, slot.index, call)
        lane.append(call)
        if len(lane) == 1:
            slot.running = call
        self.calls[call] = Call(call, run, slot.index, slot.actor, batch, need, exclusive)
        self.admission.count(slot)
        self.out.append(Send(call, slot.index, slot.actor, run, batch, mark))

    def release(self, call: Call) -> None:
        """``call`` is over (replied, failed, died or dropped): its actor is free for the
        next."""
        del self.calls[call.id]
        if not call.detached:
            call.run.returned(call.batch)
        slot = self.slots[call.slot]
        lane = slot.lane
        was_running = lane[0] == call.id
        lane.remove(call.id)
        slot.running = lane[0] if lane else 0
        self.admission.count(slot)
        if not lane:
            self.busy -= 1
        elif was_running:
            now = slot.running_since = self.clock.monotonic()
            head = self.calls[lane[0]]
            if head.run.policy.timeout is not None:
                self.timeouts.started(now, head.run.policy.timeout, slot.index, head.id)
        if slot.isolated and not lane:
            slot.isolated = False
            self.tokens.extend([slot.index] * (2 if self.pipelining else 1))
        else:
            self.tokens.append(slot.index)

    # -- hearing back ----------------------------------------------------------------------

    def replied(self, event: Replied) -> None:
        call = self.calls.get(event.call)
        if call is None:
            return  # released meanwhile (its actor died or was killed)
        self.release(call)
        reply = event.reply
        # the highest peak among its rows is what calls are expected to need (not from a
        # row run alone after a memory kill: one far above the others must not hold every
        # later call to its size); a call left to run past its timeout measured it too
        if reply.outcomes and call.measures and not call.exclusive and \
                (call.detached or not call.orphaned):
            self.peaks.learn_peak(reply.peak)
        if not call.orphaned:
            call.run.replied(reply, call.batch, actor_label(call.slot))

    def died(self, event: Died) -> None:
        """The actor of a call died: replace it and run the rows it held again.

        Every call the dead actor held (of any run) is settled at this first news of its
        death. When it held one call of one row, that row is charged; a row charged
        ``max_worker_deaths`` times fails with WorkerDiedError. When it held several rows
        (a batch, or a call queued behind the running one, maybe of another run), which one
        killed it is unknown (a finished call's reply may die with the process): none is
        charged, and each runs again alone on its actor, where a death names its row.
        """
        call = self.calls.get(event.call)
        if call is None:
            return
        slot = self.slots[call.slot]
        held = [self.calls[c] for c in slot.lane if self.calls[c].actor == call.actor]
        for each in held:
            self.release(each)
        if not self.owned:
            error = WorkerDiedError(
                f"an actor handed in by the user died and cannot be replaced: {event.error}")
            for each in held:
                if not each.orphaned:
                    each.run.fail(error)
            return
        admission = self.admission
        budget = admission.budget(slot) if event.memory else None
        reading = admission.reading(slot)
        if event.memory:
            admission.killed(slot)  # nothing starts on its node until it is gone
            if budget is None:
                self.shrink(slot)  # no memory admission: the last resort
        self.lose(slot, call.actor)
        live = [each for each in held if not each.orphaned]
        alone = len(held) == 1 and len(call.batch) == 1
        for run in {id(each.run): each.run for each in live}.values():
            rows = [item for each in live if each.run is run for item in each.batch]
            verdict = judge(run, rows, memory=event.memory, budget=budget, used=event.used,
                            reading=reading, alone=alone, exclusive=call.exclusive)
            if verdict is Verdict.CHARGED:
                run.charge_death(rows, event.error, alone)
            elif verdict is Verdict.INNOCENT:
                run.resend(rows)
            elif verdict is Verdict.EXCEEDS_NODE:
                assert budget is not None
                run.too_large(rows[0], event.used, budget, reading)
            else:
                run.killed_for_memory(rows, event.used)

    # -- time ------------------------------------------------------------------------------

    def on_time(self) -> None:
        """A deadline came: calls past their timeout fail; actors Ray has not placed are
        reported; with none placed for ``placement_timeout``, the runs fail."""
        now = self.clock.monotonic()
        placement = self.placement
        if self.runs:
            if placement.timed_out(now, self.runs, self.name()):
                return
            if placement.waiting and not placement.reported(self.active):
                late = placement.late(now)
                if late:
                    placement.notice(late, self.active, self.size, self.name(), self.runs)
        self.overdue(now)

    def overdue(self, now: float) -> None:
        """Kill the actors whose running call passed its run's timeout: those rows fail; the
        calls queued behind it (of any run) are sent again, uncharged. Actors handed in by
        the user are not killed (see :meth:`overran`)."""
        for index, running in self.timeouts.due(now):
            slot = self.slots[index]
            call = self.calls.get(running)
            if call is None or not slot.lane or slot.lane[0] != running:
                continue  # (not a running call's: never from this core)
            timeout = call.run.policy.timeout
            if not self.owned:
                self.overran(slot, call)
                continue
            for each in [self.calls[c] for c in slot.lane]:
                self.release(each)
                if each is not call and not each.orphaned:
                    each.run.again(each.batch)
            self.lose(slot, call.actor)
            if not call.orphaned and timeout is not None:
                call.run.timed_out(call.batch, timeout, self.clock.wall())

    def overran(self, slot: Slot, call: Call) -> None:
        """``call`` ran past its run's timeout on an actor handed in by the user, which is
        never killed: it is left to run and its outcome dropped; its rows fail now, once;
        the calls queued behind it (of any run) are sent again elsewhere (they may wait
        behind it for as long as it runs), and are dropped too. The slot takes no new call
        until those calls end (its memory stays counted); no worker died."""
        if call.orphaned:
            return  # its run ended, or it was timed out already: nothing more to do
        slot.isolated = True  # nothing new waits behind it
        timeout = call.run.policy.timeout
        for each in [self.calls[c] for c in slot.lane]:
            if each.orphaned:
                continue
            each.orphaned = each.detached = True
            each.run.returned(each.batch)
            if each is call:
                assert timeout is not None
                call.run.timed_out(call.batch, timeout, self.clock.wall(), killed=False)
            else:
                each.run.again(each.batch)
