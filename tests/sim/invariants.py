"""What must hold after every event, checked from the world's account (what was sent, what
ran and when, what died) rather than from the core's internals.

1. Never more than ``size`` calls running at once, one at a time per actor (and calls go only
   to actors the core was told are placed, never to one it killed).
2. Every row handed out exactly once, to its own run, in input order where the run is
   ordered; every row of a run that ends normally is handed out.
3. A death or kill is charged only to the runs whose calls the actor held: a run's
   worker_deaths, retries and failures stay within what happened to its own calls, and a
   WorkerDiedError names a row whose own call died alone on its actor.
4. Once calls' memory is known, the calls running together on a node fit its budget; and no
   call sent after the core heard of a memory kill on a node starts there while the killed
   worker still holds its memory.
5. No run waits forever while capacity exists: when nothing is pending but the core's
   deadlines, an actor is placed and idle and a run has rows left, something is sent by the
   next deadline.
6. Timeouts count from a call's start on its actor: an actor running a call of an open run
   is killed only once that call ran its run's timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from thread_chunks._actor import Outcome
from thread_chunks._errors import ActorPlacementError, WorkerDiedError

if TYPE_CHECKING:
    from .world import Actor, Call, NodeState, World, WorldRun

NAMES = {
    1: "at most size calls running",
    2: "each row handed out once, in order, to its run",
    3: "a death charged to its own run",
    4: "admitted memory within the node's budget",
    5: "no run waits forever while capacity exists",
    6: "timeouts count from a call's start",
}
EPSILON = 1e-9

INPUT_END = "input end"
IDLE = "idle while a call fits"
NO_BUDGET = "alone on a node with no budget"
IDLE_LIMIT = 60.0
KNOWN: dict[str, str] = {}
"""Core bugs the simulator found that are still open: the seed sweep tolerates them (and
counts them); tests/test_sim.py shows each with a seed (xfail, strict)."""


class SimViolation(AssertionError):
    """An invariant broke: which, at which event of which seed, and what led to it."""

    def __init__(self, invariant: int, seed: int, event: int, message: str,
                 trace: list[str], known: str = "") -> None:
        self.invariant = invariant
        self.seed = seed
        self.event = event
        self.known = known
        super().__init__(
            f"invariant {invariant} ({NAMES[invariant]}) broken at event {event} of seed "
            f"{seed}: {message}{f' (known core bug: {known})' if known else ''}"
            f"\nreplay: SIM_SEED={seed} pytest tests/test_sim.py -k replay -s"
            "\nlast events:\n" + "\n".join(trace))


class Invariants:
    """The checks, run by the world at each step."""

    def __init__(self, world: World) -> None:
        self.world = world

    def fail(self, invariant: int, message: str, known: str = "") -> None:
        """Raise the violation; ``known``: the name of a known core bug it shows (see
        KNOWN), which the sweep tolerates while that bug is open."""
        world = self.world
        raise SimViolation(invariant, world.scenario.seed, world.events, message,
                           list(world.trace), known)

    # -- after every event -----------------------------------------------------------------

    def after_event(self) -> None:
        world = self.world
        size = world.scenario.size
        if world.executing > size:
            self.fail(1, f"{world.executing} calls running at once on a pool of {size}")
        self.idling()
        for wr in world.runs:
            if wr.run is not None:
                self.charged(wr)
                peak = world.binding.stats(wr.run).peak_concurrency
                if peak > size:
                    self.fail(1, f"run {wr.spec.rid} reports {peak} calls at once on a pool "
                                 f"of {size}")

    def idling(self) -> None:
        """Invariant 5, while calls run: no placed actor stays idle for IDLE_LIMIT seconds
        while a run has rows left to read and its node has room for a call (only where the
        world sees all the core needs: actors of ours, an unordered run without max_buffered
        whose input does not fail, no call alone on the node, no killed worker's memory)."""
        world = self.world
        now, idle = world.clock.now, world.idle_since
        if not world.scenario.owned:
            return
        hungry = next((wr for wr in world.runs if wr.open and wr.read < len(wr.spec.rows)
                       and not wr.spec.ordered and wr.spec.max_buffered is None
                       and wr.spec.source_fails_at is None), None)
        if hungry is None:
            idle.clear()
            return
        need = world.learned or world.scenario.memory_per_call or 0
        for actor in world.current.values():
            node = actor.node
            if not (actor.placed and actor.alive and not actor.killed and actor.running is None
                    and not actor.queue and node is not None and not node.lingering):
                idle.pop(actor.slot, None)
                continue
            running = [a.running for a in node.actors if a.running is not None]
            room = not running or (need > 0 and not any(c.exclusive for c in running) and
                                   sum(c.need or need for c in running) + need
                                   <= node.cautious_budget())
            if not room:
                idle.pop(actor.slot, None)
                continue
            since = idle.setdefault(actor.slot, now)
            if now - since > IDLE_LIMIT:
                self.fail(5, f"actor {actor.slot}/{actor.inc} idle for {now - since:.1f} s "
                             f"while run {hungry.spec.rid} has "
                             f"{len(hungry.spec.rows) - hungry.read} rows left to read and "
                             f"{node.name} has room ({len(running)} calls of "
                             f"{need >> 20} MiB run, budget {node.cautious_budget() >> 20} "
                             "MiB)",
                          known=IDLE)

    def charged(self, wr: WorldRun) -> None:
        assert wr.run is not None
        stats = self.world.binding.stats(wr.run)
        rid = wr.spec.rid
        if stats.worker_deaths > wr.deaths:
            self.fail(3, f"run {rid} counts {stats.worker_deaths} worker deaths; actors "
                         f"holding its calls died or were killed {wr.deaths} times")
        if stats.retries > wr.rows_hit + wr.raised_attempts:
            self.fail(3, f"run {rid} counts {stats.retries} retries; its rows were on dying "
                         f"actors {wr.rows_hit} times and raised {wr.raised_attempts} times")
        if stats.failures > len(wr.troubled):
            self.fail(3, f"run {rid} counts {stats.failures} failures; only "
                         f"{len(wr.troubled)} of its rows ever failed or died")

    # -- at points of the world's account -----------------------------------------------------

    def on_start(self, call: Call) -> None:
        """A call starts on its actor (invariant 1: per slot, one actor runs; 4: memory)."""
        world = self.world
        slot = call.actor.slot
        if world.running_on[slot] > 1:
            others = [f"{slot}/{a.inc} (call {a.running.cid})" for a in world.actors.values()
                      if a.slot == slot and a.running is not None]
            self.fail(1, f"slot {slot} runs calls on two actors at once: {', '.join(others)}")
        node = call.actor.node
        if node is not None:
            self.admitted(node)
            for pid, heard in node.heard.items():
                if call.sent_at >= heard:
                    self.fail(4, f"call {call.cid} sent at {call.sent_at:.4f} starts on "
                                 f"{node.name}, where worker {pid} killed for memory (heard "
                                 f"at {heard:.4f}) still holds {node.lingering[pid][0] >> 20} "
                                 "MiB")

    def admitted(self, node: NodeState) -> None:
        """Invariant 4, as a call starts on ``node``: the calls running together there, each
        counted at what calls were known to need when it was sent, fit the node's budget."""
        running = [a.running for a in node.actors if a.running is not None]
        if len(running) < 2:
            return  # a call alone on its node always runs
        alone = next((c for c in running if c.exclusive), None)
        if alone is not None:
            self.fail(4, f"call {alone.cid} (row {alone.rows[0]} of run {alone.wr.spec.rid}, "
                         f"killed for memory before) is to run alone on {node.name}, but "
                         f"{len(running) - 1} other calls run there (the core's budget for "
                         f"the node: {node.cautious_budget() >> 20} MiB)",
                      known=NO_BUDGET if node.cautious_budget() <= 0 else "")
        known = [c for c in running if c.need and not c.exclusive]
        total = sum(c.need for c in known)
        budget = node.budget()
        if known and total > budget:
            each = ", ".join(f"call {c.cid}: {c.need >> 20} MiB" for c in known)
            self.fail(4, f"{len(running)} calls run on {node.name} ({each}; "
                         f"{total >> 20} MiB) beyond its budget of {budget >> 20} MiB")

    def on_kill(self, actor: Actor) -> None:
        """Invariant 6: the core kills an actor running a call of an open run only for that
        call's timeout, counted from its start."""
        call = actor.running
        if call is None or not actor.alive or not call.wr.open:
            return
        run = call.wr.run
        assert run is not None and call.started_at is not None
        if self.world.binding.error(run) is not None:
            return
        timeout = call.wr.spec.timeout
        ran = self.world.clock.now - call.started_at
        if timeout is None:
            self.fail(6, f"actor {actor.slot}/{actor.inc} killed while running call "
                         f"{call.cid} of open run {call.wr.spec.rid}, which has no timeout")
        elif ran + EPSILON < timeout:
            self.fail(6, f"call {call.cid} of run {call.wr.spec.rid} killed after running "
                         f"{ran:.4f} s of its timeout={timeout:.4f} s (sent "
                         f"{self.world.clock.now - call.sent_at:.4f} s ago)")

    def on_send(self, wr: WorldRun) -> None:
        """Invariant 2: rows read ahead of those handed out stay within max_buffered."""
        bound = wr.spec.max_buffered
        if bound is not None and wr.read - len(wr.handed) > bound:
            self.fail(2, f"run {wr.spec.rid} has {wr.read - len(wr.handed)} rows read and not "
                         f"handed out; max_buffered={bound}")

    def on_outcome(self, wr: WorldRun, outcome: Outcome) -> None:
        """Invariant 2 (and 3 for a WorkerDiedError): one outcome handed out."""
        rid, row, ok, value = wr.spec.rid, outcome[0], outcome[1], outcome[2]
        if not 0 <= row < len(wr.spec.rows):
            self.fail(2, f"run {rid} handed out row {row}, not one of its "
                         f"{len(wr.spec.rows)}")
        if row in wr.handed:
            self.fail(2, f"run {rid} handed out row {row} twice")
        wr.handed.add(row)
        if wr.spec.ordered:
            if row != wr.next_row:
                self.fail(2, f"ordered run {rid} handed out row {row}; row {wr.next_row} "
                             "is next")
            wr.next_row += 1
        if ok:
            from .world import payload
            if value != payload(rid, row, wr.spec.rows[row].size):
                self.fail(2, f"run {rid} handed out for row {row} the result "
                             f"{bytes(value)[:12]!r}...")
            if row not in wr.succeeded:
                self.fail(2, f"run {rid} handed out row {row} as a success; it never ran")
        elif isinstance(value, WorkerDiedError):
            if not wr.alone.get(row, False):
                self.fail(3, f"run {rid} failed row {row} with WorkerDiedError, but its last "
                             f"death was not of its call alone ({value})")
            if "while it ran alone" in str(value) and not wr.alone_on_node.get(row, False):
                self.fail(3, f"run {rid} failed row {row} as too large for its node 'while "
                             "it ran alone', but other calls ran on its node when it was "
                             f"killed ({value})")
        elif isinstance(value, TimeoutError):
            self.timed_out(wr, row)
        elif isinstance(value, ValueError) and row not in wr.raised:
            self.fail(2, f"run {rid} handed out row {row} as raising; it never raised")

    def timed_out(self, wr: WorldRun, row: int) -> None:
        """Invariant 6: a row handed out as timed out ran its timeout on its actor."""
        call, timeout = wr.last_call.get(row), wr.spec.timeout
        rid = wr.spec.rid
        if call is None or timeout is None:
            self.fail(6, f"run {rid} handed out row {row} as timed out, but "
                         f"{'it was never sent' if call is None else 'it has no timeout'}")
            return
        if call.started_at is None:
            self.fail(6, f"run {rid} handed out row {row} as timed out; its call {call.cid} "
                         f"never started on its actor (sent at {call.sent_at:.4f})")
            return
        ended = self.world.clock.now if call.killed_at is None else call.killed_at
        if ended - call.started_at + EPSILON < timeout:
            self.fail(6, f"run {rid} handed out row {row} as timed out; its call {call.cid} "
                         f"ran {ended - call.started_at:.4f} s of timeout={timeout:.4f} s")

    def on_closed(self, wr: WorldRun) -> None:
        """Invariant 2: a run that ended normally handed out every row (and invariant 5:
        one that handed out every row does not fail waiting for actors)."""
        rows = len(wr.spec.rows)
        if wr.closed == "done" and len(wr.handed) != rows:
            missing = sorted(set(range(rows)) - wr.handed)
            self.fail(2, f"run {wr.spec.rid} ended with rows {missing[:10]} never handed out")
        assert wr.run is not None
        error = self.world.binding.error(wr.run)
        if wr.closed == "error" and len(wr.handed) == rows and \
                wr.spec.source_fails_at is None and isinstance(error, ActorPlacementError):
            self.fail(5, f"run {wr.spec.rid} handed out all its {rows} rows, then failed "
                         f"waiting for actors: {error}", known=INPUT_END)

    # -- waiting -------------------------------------------------------------------------------

    def idle_capacity(self) -> Actor | None:
        for actor in self.world.current.values():
            if actor.placed and actor.alive and not actor.killed and actor.running is None \
                    and not actor.queue:
                return actor
        return None

    def waiting_run(self) -> WorldRun | None:
        for wr in self.world.runs:
            if wr.open and len(wr.handed) < len(wr.spec.rows):
                return wr
        return None

    def quiet_check(self) -> None:
        """Invariant 5, before the world moves on: quiet (nothing pending but deadlines and
        the scenario's own events), an idle placed actor and a run with rows left."""
        world = self.world
        if world.activity or world.calls:
            world.starving = None
            return
        actor, wr = self.idle_capacity(), self.waiting_run()
        if actor is None or wr is None:
            world.starving = None
            return
        if world.starving is None:
            world.starving = (world.sends, world.ticks)
        deadline = world.core.deadline()
        if deadline is None or world.ticks > world.starving[1]:
            self.fail(5, f"run {wr.spec.rid} has {len(wr.spec.rows) - len(wr.handed)} rows "
                         f"left and actor {actor.slot}/{actor.inc} is idle, but nothing is "
                         f"sent (next deadline: {deadline})")

    def stalled(self) -> None:
        """Nothing will ever happen again and runs are open."""
        actor, wr = self.idle_capacity(), self.waiting_run()
        if actor is not None and wr is not None:
            self.fail(5, f"run {wr.spec.rid} waits forever with actor {actor.slot}/"
                         f"{actor.inc} idle")
        for each in self.world.runs:
            if each.open and each.spec.placement_timeout is not None:
                self.fail(5, f"run {each.spec.rid} waits forever for actors though its "
                             f"placement_timeout is {each.spec.placement_timeout}")
        for each in self.world.runs:
            if each.open and len(each.handed) == len(each.spec.rows):
                self.fail(5, f"run {each.spec.rid} handed out all its {len(each.spec.rows)} "
                             "rows but never ends (no actor is placed)", known=INPUT_END)


class Unchecked(Invariants):
    """No checks after each event (for measuring the core alone: benchmarks/engine.py)."""

    def after_event(self) -> None:
        pass

    def on_start(self, call: Call) -> None:
        pass

    def on_outcome(self, wr: WorldRun, outcome: Outcome) -> None:
        pass

    def on_send(self, wr: WorldRun) -> None:
        pass

    def quiet_check(self) -> None:
        pass
