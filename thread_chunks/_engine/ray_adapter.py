"""Ray in one place: the actors and the function they hold (:class:`Pool`), and the adapter
(:class:`Adapter`) that carries out the scheduler's commands on them and turns what Ray
reports into the scheduler's events.

Nobody owns a thread. Ray reports each finished reference (a call, a probe, a question) from
its callback thread into one :class:`Inbox` and wakes every open run; whichever driver wakes
first (the thread iterating a run, or an asyncio task) takes the inbox for all of them under
the adapter's lock, hands each event to the scheduler and carries out its commands. A run's
driver waits on its own wake-up: never a poll, and no list of pending references is rebuilt
per result.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray
from ray.actor import ActorClass, ActorHandle
from ray.exceptions import OutOfMemoryError, RayActorError, RayError, RayTaskError

from .._actor import (
    Item,
    LabelledActor,
    NodeMemory,
    Outcome,
    RemoteLabelledActor,
    function_name,
    read_reply,
)
from .._digest import Identity
from .._errors import ConcurrencyReducedWarning, ThreadChunksError, warn_user
from .._session import ensure_ray, watch_shutdown
from .._types import ChunkSize
from .._wire import Wire, pack_batch
from .core import Scheduler
from .run import Run
from .vocabulary import (
    ACTOR_DIED,
    Answered,
    AwaitKilled,
    Broken,
    CallFailed,
    Closed,
    Command,
    Died,
    Event,
    Handed,
    Kill,
    Opened,
    Placed,
    Probe,
    ReadUsage,
    Reloaded,
    Replied,
    Send,
    StartFailed,
    SystemClock,
    Tick,
)
from .wake import Wake

log = logging.getLogger("thread_chunks")

RAY_CHECK_SECONDS = 1.0
"""Where Ray gives no signal of its shutdown (see :func:`watch_shutdown`), a run's driver
waits at most this long before it looks whether Ray is still running."""
_MEMORY_KILL = re.compile(r"low on memory|out of memory|OUT_OF_MEMORY|memory usage threshold",
                          re.IGNORECASE)
"""Ray's message of a worker it killed for memory."""
_KILLED_AT = (re.compile(r"Selected to kill:[^\]]*?memory used\s*=\s*([0-9.]+)\s*(Gi?B)"),
              re.compile(r"memory used\s*[=:]\s*([0-9.]+)\s*(Gi?B)", re.IGNORECASE))
"""How much the killed worker used, in Ray's message of a memory kill: the worker it selected
to kill when the message lists several, else the one it names."""


def killed_at(message: str, pid: int | None = None) -> int:
    """The bytes the worker ``pid`` used when Ray killed it for memory, from Ray's message
    (which may list several workers killed at once); 0 when it does not say."""
    mine = None if pid is None else re.search(
        rf"pid={pid}, actual memory used\s*=\s*([0-9.]+)\s*(Gi?B)", message)
    found = mine or _KILLED_AT[0].search(message) or _KILLED_AT[1].search(message)
    if found is None:
        return 0
    return int(float(found.group(1)) * (2**30 if found.group(2).lower() == "gib" else 1e9))


def _amounts(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items()
             if not k.startswith("node:") and k != "object_store_memory"}
    return ", ".join(f"{k}={v / 2**30:.3g} GiB" if k == "memory" else f"{k}={v:g}"
                     for k, v in sorted(shown.items())) or "nothing"


# -- the actors ------------------------------------------------------------------------------

def auto_chunk_size(memory_per_call: int | None) -> tuple[int, str]:
    """How many calls fit the Ray cluster at once, and why: the CPUs available and, with
    ``memory_per_call``, the calls whose ``memory`` fits (counted per node: a call cannot
    straddle two nodes, and capped by what the cluster has available now). At least 1.
    Without ``memory_per_call`` memory is left to the learned admission (``memory_budget``):
    this many actors, and only as many calls at once as their measured peaks fit."""
    available = ray.available_resources()
    cpus = int(available.get("CPU", 0))
    if memory_per_call is None:
        size = max(1, cpus)
        why = (f"chunk_size='auto': {size} at once ({cpus} CPUs available; calls admitted "
               "by their measured memory)")
        log.info(why)
        return size, why
    per_node = sum(int(node["Resources"].get("memory", 0) // memory_per_call)
                   for node in ray.nodes() if node.get("Alive"))
    fits = min(per_node, int(available.get("memory", 0) // memory_per_call))
    size = max(1, min(cpus, fits))
    why = (f"chunk_size='auto': {size} at once ({cpus} CPUs available, memory for {fits} "
           f"calls of {memory_per_call / 2**30:.2f} GiB)")
    log.info(why)
    return size, why


def explicit_demand(options: Mapping[str, Any]) -> dict[str, float]:
    """The Ray resources one actor explicitly asks for (names as ``ray.nodes()`` shows them)."""
    demand: dict[str, float] = {}
    for option, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU"), ("memory", "memory")):
        if options.get(option):
            demand[resource] = float(options[option])
    for name, amount in (options.get("resources") or {}).items():
        if amount:
            demand[str(name)] = float(amount)
    return demand


def remote_actor_class(actor_cls: object) -> ActorClass:
    """``actor_cls`` as a Ray actor class, or a TypeError naming it.

    Accepts a subclass of :class:`LabelledActor`, plain or already decorated with ``ray.remote``.
    """
    if actor_cls is None:
        return RemoteLabelledActor
    if isinstance(actor_cls, ActorClass):
        modified = actor_cls.__ray_metadata__.modified_class
        if isinstance(modified, type) and issubclass(modified, LabelledActor):
            return actor_cls
    elif isinstance(actor_cls, type) and issubclass(actor_cls, LabelledActor):
        return ray.remote(actor_cls)
    raise TypeError(
        f"actor_cls: expected a subclass of thread_chunks.LabelledActor (plain or decorated "
        f"with ray.remote), got {actor_cls!r}"
    )


def session_token() -> str:
    """Which Ray session and job this driver is connected to (Ray must be running).

    Actors live as long as the job that made them: after ``ray.shutdown()`` and a new
    ``ray.init()`` (a new cluster, or a new job on the same one) the old handles are dead.
    """
    context = ray.get_runtime_context()
    return f"{context.get_session_name()}/{context.get_job_id()}"



@dataclass(slots=True, eq=False)
class _ActorSlot:
    """The Ray side of one actor slot (its scheduling state is the core's :class:`~.slots.Slot`)."""

    handle: ActorHandle[Any] | None = None
    """Its actor (None: none made yet, or killed)."""
    actor: int = 1
    """The incarnation the scheduler knows it by."""
    holds: object = None
    """The function reference it was given."""
    probe: ray.ObjectRef[Any] | None = None
    """Its readiness probe in flight."""


class Pool:
    """``size`` actors holding one function at a time.

    Actors are created on first use and replaced when they die. The function is put into Ray's
    object store once and copied to the actors only when a different function is asked for.
    Actors handed in by the user are used as they are and never killed by us. When Ray was
    restarted since the actors were made, they are forgotten and made again in the new session.

    An actor is *ready* once it has started and holds the current function; the scheduler
    learns it from a probe (:meth:`probe`) and sends calls only to ready actors, so an actor
    Ray cannot place (a lost node, resources held elsewhere) never holds rows hostage.
    """

    def __init__(
        self,
        size: ChunkSize,
        *,
        actor_cls: object = None,
        actor_options: Mapping[str, Any] | None = None,
        actors: Sequence[ActorHandle[Any]] | None = None,
        memory_per_call: int | None = None,
    ) -> None:
        self.started_ray = False
        self.generation = 0
        """Counts the functions the actors were given: the adapter's view of which actors
        are ready holds only while it is unchanged."""
        self.auto = ""
        """Why this size was chosen, when chunk_size was 'auto'."""
        self.adapter: object = None
        """The adapter of this pool's calls (set by ``Adapter.of``). It holds the pool too: a
        cycle the collector frees once the pool's owner drops it, actors and all."""
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._leases: Counter[int] = Counter()  # thread id -> runs in progress
        self._cls = remote_actor_class(actor_cls)
        self._options = dict(actor_options or {})
        self._memory_per_call = memory_per_call
        self._memory_via_call = memory_per_call is not None and "memory" not in self._options
        if memory_per_call is not None:  # Ray then never packs more onto a node than fit
            self._options.setdefault("memory", memory_per_call)
        self.owned = actors is None
        self._session = ""
        self._requested = size
        self._slots: list[_ActorSlot] = []
        if actors is not None:
            self._slots = [_ActorSlot(actor) for actor in actors]
        elif size != "auto":
            self._slots = [_ActorSlot() for _ in range(size)]
        self._func: object = None
        self._identity: Identity | None = None  # the function's when it was put
        self._func_ref: ray.ObjectRef[Any] | None = None
        self._fitted = False
        self._peaks: dict[object, int] = {}  # function -> the largest peak of its calls
        if size == "auto":
            self.start()

    @property
    def size(self) -> int:
        return len(self._slots)

    @property
    def actors_made(self) -> int:
        """How many of the slots have an actor now."""
        return sum(slot.handle is not None for slot in self._slots)

    @property
    def session(self) -> str:
        """The Ray session and job the actors belong to ("" before the first use)."""
        return self._session

    @property
    def demand(self) -> dict[str, float]:
        """What one actor asks Ray for (Ray's default for an actor: 1 CPU to be placed)."""
        return explicit_demand(self._options) or {"CPU": 1.0}

    @property
    def function(self) -> object:
        """The function the actors hold, when we put it there; None for adopted actors."""
        return self._func

    def start(self) -> None:
        """Make sure Ray is running (remembering whether we started it), and forget actors
        of a Ray session that has ended."""
        with self._lock:
            if ensure_ray():
                self.started_ray = True
            token = session_token()
            if token == self._session:
                return
            stale, self._session = bool(self._session), token
            if stale and not self.owned:
                raise ThreadChunksError(
                    "the actors handed in (actors=) belong to a Ray session that has ended "
                    "(Ray was shut down or restarted since they were made) and cannot be "
                    "made again by thread-chunks: create new actors in this session")
            if stale:
                log.info("Ray was restarted: making new actors in the current session")
            self._func, self._func_ref, self._fitted = None, None, False
            self._identity = None
            size = self._requested
            if size == "auto":
                size, self.auto = auto_chunk_size(self._memory_per_call)
            if self.owned:
                self._slots = [_ActorSlot() for _ in range(size)]
            else:
                for slot in self._slots:
                    slot.holds, slot.probe = None, None

    def use(self, func: Callable[..., Any] | None, identity: Identity | None = None) -> None:
        """Make ``func`` the function the actors hold (put into Ray once; each actor gets it
        through its probe). No copy when they already hold it; None keeps theirs.

        ``identity`` is ``func``'s as computed now (once per map): when the pool put this
        very object under another identity (changed in place since: ``model.k = 3``), or
        under one that could not be computed, it is sent again, so the actors run what the
        map identified. Without one (None), the object held is kept; with one that could
        not be computed, it is sent again unless runs of it are in progress (they share the
        actors, as they would with any identity: its results are never reused anyway)."""
        with self._lock:
            self.fit()
            if func is None or (func is self._func and (self.holds(identity) or (
                    identity is not None and identity.digest is None and self._leases))):
                return
            self._wait_for_runs(func)
            try:
                ref = ray.put(func)
            except Exception as exc:
                raise TypeError(
                    f"cannot send function {function_name(func)!r} to Ray workers: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._func, self._func_ref, self._identity = func, ref, identity
            self.generation += 1
            for slot in self._slots:  # each is probed again, and sent the function then
                slot.probe = None

    def holds(self, identity: Identity | None) -> bool:
        """Whether the function put into the actors had ``identity`` then (None: not
        asked). An unknown identity never equals another, but is its own (the same map)."""
        held = self._identity
        return identity is None or identity is held or (
            held is not None and identity.digest is not None and identity.digest == held.digest)

    def _wait_for_runs(self, func: object) -> None:
        """Block while runs of the current function are in progress in other threads."""
        while self._leases:
            if threading.get_ident() in self._leases:
                raise RuntimeError(
                    f"cannot switch these actors to {function_name(func)!r} while a run of "
                    f"{function_name(self._func)!r} on them is still open in this thread "
                    "(finish or close that imap iterator first)")
            self._idle.wait()

    @contextmanager
    def lease(self, func: Callable[..., Any] | None, identity: Identity | None = None
              ) -> Iterator[None]:
        """Hold the actors to ``func`` (as ``identity`` says it was) for one run: other
        threads wanting another function wait until it ends (runs of the same function
        share the actors)."""
        me = threading.get_ident()
        with self._lock:
            self.use(func, identity)
            self._leases[me] += 1
        try:
            yield
        finally:
            with self._lock:
                self._leases[me] -= 1
                if not self._leases[me]:
                    del self._leases[me]
                self._idle.notify_all()

    def handle(self, slot: int) -> ActorHandle[Any]:
        """The actor in ``slot``, created now if there is none (it may not be placed yet)."""
        with self._lock:
            record = self._slots[slot]
            actor = record.handle
            if actor is None:
                actor = self._cls.options(**self._options).remote(self._func_ref)
                record.handle, record.holds = actor, self._func_ref
            return actor

    def probe(self, slot: int, actor: int) -> ray.ObjectRef[Any]:
        """A reference that resolves once the actor in ``slot`` (incarnation ``actor``,
        created if missing) has started and holds the current function (to the
        :class:`NodeMemory` of its node).

        An actor holding an older function is sent the current one: calls sent afterwards by
        this process run after it (Ray keeps one caller's calls to an actor in order)."""
        with self._lock:
            handle = self.handle(slot)
            record = self._slots[slot]
            record.actor = actor
            probe = record.probe
            if probe is None:  # it resolves to the NodeMemory of the actor's node
                if record.holds is self._func_ref or self._func_ref is None:
                    probe = handle._tc_ready.remote(None)
                else:
                    probe = handle._tc_ready.remote(self._func_ref)
                    record.holds = self._func_ref
                record.probe = probe
            return probe

    def probed(self, slot: int, probe: ray.ObjectRef[Any]) -> bool:
        """``probe`` of ``slot`` resolved: whether it is its current one (else the actor was
        replaced, or given another function, meanwhile)."""
        with self._lock:
            if slot >= self.size or self._slots[slot].probe is not probe:
                return False
            self._slots[slot].probe = None
            return True

    def current(self, slot: int) -> ActorHandle[Any]:
        """The actor in ``slot`` (it has one: the scheduler sends only to ready actors)."""
        actor = self._slots[slot].handle
        assert actor is not None
        return actor

    @property
    def memory_per_call(self) -> int | None:
        return self._memory_per_call

    def expected_peak(self) -> int | None:
        """The memory a call of the current function is expected to need: the largest peak
        its calls were measured at (in any run on this pool, or recorded in a checkpoint),
        else ``memory_per_call``; None when nothing is known yet."""
        return self._peaks.get(self._peak_key(), self._memory_per_call)

    def learn_peak(self, peak: int) -> None:
        """A call of the current function was measured at ``peak`` bytes."""
        key = self._peak_key()
        if peak > self._peaks.get(key, -1):
            self._peaks[key] = peak

    def _peak_key(self) -> object:
        func = self._func
        try:
            hash(func)
        except TypeError:
            return function_name(func)
        return func

    def handles(self) -> list[ActorHandle[Any]]:
        """All actors, created now where missing."""
        with self._lock:
            self.fit()
            return [self.handle(slot) for slot in range(self.size)]

    def fit(self) -> None:
        """Once per Ray session, before the first actor: check the resources
        ``actor_options`` ask for.

        No node able to hold one actor is a ValueError naming what was asked for (and
        again on every use: the check is not passed until it passes). Fewer
        actors fitting the cluster than ``size`` shrinks the pool to what fits, with a
        ConcurrencyReducedWarning. Only explicit requests count (``num_cpus``, ``num_gpus``,
        ``memory``, ``resources``). Capacity lost later (a node gone, resources held by
        others) is the scheduler's business: it runs on the actors that are placed.
        """
        self.start()
        if self._fitted or not self.owned:
            return
        demand = explicit_demand(self._options)
        if not demand:
            self._fitted = True
            return
        fits = sum(min(int(node["Resources"].get(name, 0.0) / amount + 1e-9)
                       for name, amount in demand.items())
                   for node in ray.nodes() if node.get("Alive"))
        asked = ", ".join(f"{name}={amount:g}" for name, amount in demand.items())
        if fits == 0:
            named = " and ".join(
                ["actor_options"] * bool(demand.keys() - {"memory"} or not self._memory_via_call)
                + ["memory_per_call"] * self._memory_via_call)
            raise ValueError(
                f"{named}: no node of the Ray cluster can hold an actor asking for "
                f"{asked}; change {named} or add such a node")  # again on the next use
        self._fitted = True
        if fits < self.size:
            warn_user(
                f"only {fits} actors asking for {asked} fit the Ray cluster at once; running "
                f"{fits} calls at once instead of chunk_size={self.size}",
                ConcurrencyReducedWarning)
            del self._slots[fits:]

    def discard(self, slot: int, actor: int) -> None:
        """Kill the actor in ``slot`` (incarnation ``actor``, or one made since) so a fresh one
        is created on next use. Actors the user handed in are never killed."""
        with self._lock:
            if not self.owned or slot >= self.size:
                return
            record = self._slots[slot]
            current = record.handle
            if current is not None and record.actor <= actor:
                if ray.is_initialized():  # else Ray is gone and the actor with it
                    ray.kill(current)
                record.handle = record.holds = record.probe = None

    def close(self) -> None:
        """Kill the actors we created; the next use creates new ones (with a new adapter:
        the scheduler's view of the old actors went with them)."""
        with self._lock:
            if self.owned and self._session and ray.is_initialized() \
                    and session_token() == self._session:
                for slot, record in enumerate(self._slots):
                    self.discard(slot, record.actor)
                self.adapter = None


# -- the adapter ------------------------------------------------------------------------------

_ADAPTERS_LOCK = threading.Lock()
_CALL, _PROBE, _QUESTION = 0, 1, 2
"""What a watched reference is (the first field of its entry in ``Adapter.watched``)."""


class Inbox:
    """Where Ray's callback thread reports finished references, and whom it wakes.

    A callback Ray holds for a reference that has not resolved yet (the probe of an actor Ray
    cannot place, a call still running) reaches only this, not the adapter: so a pool whose
    function was dropped is freed, its actors with it, whatever it was still waiting for."""

    def __init__(self) -> None:
        self.finished: deque[tuple[ray.ObjectRef[Any], object]] = deque()
        self.wakes: tuple[Wake, ...] = ()  # of the open runs (replaced whole)
        self.gone = False
        """Ray's shutdown began (the references pending then never resolve)."""
        self.over = False
        """... and is over."""
        self.watched = watch_shutdown(self)
        """A shutdown of Ray is reported here as it happens (else waits are capped at
        :data:`RAY_CHECK_SECONDS`, to look)."""

    def finish(self, ref: ray.ObjectRef[Any], value: object) -> None:
        """``ref`` resolved to ``value``: called by Ray on its thread, with the value it
        deserialised there (an exception object when the call failed; see :func:`result`)."""
        self.finished.append((ref, value))  # deque.append is atomic: no lock on Ray's thread
        self.wake()

    def wake(self) -> None:
        for wake in self.wakes:
            wake.set()

    def ray_stopping(self) -> None:
        self.gone = True

    def ray_stopped(self) -> None:
        self.over = True
        self.wake()


_Watched = tuple[int, int, int, int, Run | None, list[Item] | None]
"""A reference waited for: (kind, call or question id, slot, actor incarnation, run, batch)."""


def _from_future(finish: Callable[[object], None], future: concurrent.futures.Future[Any]
                 ) -> None:
    """Report what ``future`` resolved to as ``ObjectRef._on_completed`` would."""
    error = future.exception()
    finish(error if error is not None else future.result())


def result(value: object) -> Any:
    """What a reference resolved to, as Ray hands it to a callback registered with
    ``ObjectRef._on_completed``: the value, or raises the error, as ``ray.get`` would (a
    task's own exception as an instance of its class too)."""
    if isinstance(value, RayTaskError):
        raise value.as_instanceof_cause()
    if isinstance(value, RayError):
        raise value
    return value


class Adapter:
    """The scheduler of one pool's actors in one Ray session, carried out on Ray."""

    @classmethod
    def of(cls, pool: Pool) -> Adapter:
        """The adapter of ``pool`` in its current Ray session (a new one after Ray was
        restarted: the old actors are gone with it)."""
        with _ADAPTERS_LOCK:
            found = pool.adapter
            if not isinstance(found, Adapter) or found.session != pool.session or \
                    found.size != pool.size:
                found = pool.adapter = cls(pool)
            return found

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.session = pool.session
        self.generation = pool.generation
        self.size = pool.size
        self.lock = threading.RLock()
        self.inbox = Inbox()  # what Ray's callbacks reach: not the adapter (see Inbox)
        self.scheduler = Scheduler(pool.size, owned=pool.owned, clock=SystemClock(),
                                   peaks=pool, describe_wait=self.describe_wait)
        self.watched: dict[ray.ObjectRef[Any], _Watched] = {}  # reference -> what it is
        self.wires: dict[Run, Wire] = {}  # each open run's large arguments in the store
        self.due: float | None = None
        """The deadline a driver last waited for: reached, it is a Tick even if the
        scheduler's deadline moved on meanwhile (a first call's reading is due only until
        its time)."""

    # -- runs (called by the driver) --------------------------------------------------------

    def open(self, run: Run) -> None:
        """Serve ``run`` from now on."""
        with self.lock:
            scheduler = self.scheduler
            if not scheduler.runs and self.generation != self.pool.generation:
                self.generation = self.pool.generation  # the actors get another function
                self.carry_out(scheduler.handle(Reloaded()))
            self.wires[run] = Wire()
            commands = scheduler.handle(Opened(run))
            self.inbox.wakes = tuple(each.wake for each in scheduler.runs)
            self.carry_out(commands)

    def close(self, run: Run) -> None:
        """``run`` ended (done, failed, closed early or cancelled): stop its calls only."""
        with self.lock:
            commands = self.scheduler.handle(Closed(run))
            self.inbox.wakes = tuple(each.wake for each in self.scheduler.runs)
            if not self.ray_gone():  # else its actors are gone with Ray
                self.carry_out(commands)
            wire = self.wires.pop(run, None)
            if wire is not None:
                wire.close()
        if run.on_end is not None:
            run.on_end(run.stats)

    def handed(self, run: Run, n: int) -> None:
        """The driver handed ``n`` outcomes of ``run`` out."""
        with self.lock:
            self.carry_out(self.scheduler.handle(Handed(run, n)))

    def turn(self, run: Run) -> list[Outcome] | None:
        """Do what is due for every run (finished calls and probes, deadlines, free
        actors); then ``run``'s outcomes to hand out now, [] when there are none yet (wait
        on ``run.wake``), None when the run is done. Raises what fails the run."""
        run.wake.clear()
        with self.lock:
            gone = self.ray_gone()  # (a shutdown begun meanwhile wakes the next turn)
            if not gone:
                try:
                    self.pump()
                except Exception as exc:  # the pool cannot go on: every run fails with it
                    gone = self.ray_gone()
                    if not gone:  # (else it is what Ray raised while it went away)
                        self.scheduler.handle(Broken(exc))
            if gone and not self.ray_stopping():
                self.scheduler.handle(Broken(self.ray_gone_error()))
            return run.to_hand_out()

    def time_left(self) -> float | None:
        """Seconds until the next deadline (None: none, wait for a call or probe)."""
        with self.lock:
            deadline = self.due = self.scheduler.deadline()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if self.inbox.watched:
            return left
        return RAY_CHECK_SECONDS if left is None else min(left, RAY_CHECK_SECONDS)

    # -- Ray going away ---------------------------------------------------------------------

    def ray_gone(self) -> bool:
        """Whether Ray was shut down since this adapter was made, or its shutdown began:
        nothing waited for will come, and Ray must not be touched (a call could start a new
        Ray)."""
        return self.inbox.gone or not ray.is_initialized()

    def ray_stopping(self) -> bool:
        """Whether Ray's shutdown began in another thread and is not over: the run fails once
        it is (when its wake comes), so that nothing done after the failure (closing a
        checkpoint, our actors, a Ray we started) meets a Ray half shut down."""
        return self.inbox.gone and not self.inbox.over and ray.is_initialized()

    def ray_gone_error(self) -> ThreadChunksError:
        return ThreadChunksError(
            f"Ray was shut down while {self.scheduler.name()!r} ran (ray.shutdown() was "
            "called, in this or another thread, or at exit): its calls in flight are lost. "
            "Results handed out so far stay handed out and those recorded in a checkpoint are "
            "kept; the next map (Ray running again) makes new actors and resumes from its "
            "checkpoint, if it has one")

    def describe_wait(self) -> str:
        demand = self.pool.demand
        total = {**dict.fromkeys(demand, 0.0), **ray.cluster_resources()}
        available = ray.available_resources()
        return (f"one actor asks for {_amounts(demand)}; the Ray cluster has "
                f"{_amounts(total)} in all, "
                f"{_amounts({k: available.get(k, 0.0) for k in total})} available now")

    # -- events in --------------------------------------------------------------------------

    def pump(self) -> None:
        """Everything due: finished references, then deadlines."""
        finished, scheduler = self.inbox.finished, self.scheduler
        while finished:
            ref, value = finished.popleft()
            watched = self.watched.pop(ref, None)
            if watched is not None:
                event = self.event(ref, watched, value)
                if event is not None:
                    self.carry_out(scheduler.handle(event))
        deadline, due, now = scheduler.deadline(), self.due, time.monotonic()
        if (deadline is not None and now >= deadline) or (due is not None and now >= due):
            self.due = None
            self.carry_out(scheduler.handle(Tick()))

    def event(self, ref: ray.ObjectRef[Any], watched: _Watched, value: object
              ) -> Event | None:
        """What ``ref``, resolved to ``value``, means to the scheduler (None: nothing)."""
        kind, key, slot, actor, run, batch = watched
        if kind == _CALL:
            if run is not None and batch is not None:
                wire = self.wires.get(run)
                if wire is not None:
                    wire.done(batch)
            try:
                reply = result(value)
            except (RayActorError, OutOfMemoryError) as exc:  # the worker process died
                text = str(exc)
                memory = isinstance(exc, OutOfMemoryError) or bool(_MEMORY_KILL.search(text))
                node = self.scheduler.slots[slot].node
                used = killed_at(text, node.pid if node is not None else None)
                return Died(key, exc, memory, used)
            except Exception as exc:
                return CallFailed(key, exc)
            return Replied(key, read_reply(reply))
        if kind == _PROBE:
            if not self.pool.probed(slot, ref):
                return None  # replaced, or given another function, meanwhile
            try:
                reading = result(value)
            except RayActorError as exc:
                return StartFailed(slot, actor, exc,
                                   bool(getattr(exc, "actor_init_failed", False)))
            except RayError as exc:  # the function could not be loaded there
                return StartFailed(slot, actor, exc, True)
            return Placed(slot, actor, reading if isinstance(reading, NodeMemory) else None)
        try:
            answer = result(value)
        except RayError:
            answer = ACTOR_DIED
        return Answered(key, answer)

    # -- commands out -----------------------------------------------------------------------

    def carry_out(self, commands: list[Command]) -> None:
        """Do what the scheduler said, in order (nothing once Ray is gone)."""
        if not commands or self.inbox.gone:
            return
        pool = self.pool
        for command in commands:
            if type(command) is Send:
                self.send(command)
            elif type(command) is Probe:
                ref = pool.probe(command.slot, command.actor)
                if ref not in self.watched:
                    self.watch(ref, _PROBE, 0, command.slot, command.actor)
            elif type(command) is Kill:
                pool.discard(command.slot, command.actor)
            elif type(command) is AwaitKilled:
                ref = pool.current(command.slot)._tc_settle.remote(list(command.pids))
                self.watch(ref, _QUESTION, command.question, command.slot, command.actor)
            elif type(command) is ReadUsage:
                ref = pool.current(command.slot)._tc_usage.remote(command.pid, command.mark)
                self.watch(ref, _QUESTION, command.question, command.slot, command.actor)

    def send(self, command: Send) -> None:
        run, batch = command.run, command.batch
        wire = self.wires.get(run)
        sent = batch if wire is None else wire.send(batch)
        packed = pack_batch(sent)
        # (no references: the payload alone, one argument less for Ray to serialise)
        arguments = (sent,) if packed is None else packed if packed[1] else packed[:1]
        actor = self.pool.current(command.slot)
        ref = actor._tc_run_batch.remote(*arguments, mark=command.mark) if command.mark else \
            actor._tc_run_batch.remote(*arguments)
        self.watch(ref, _CALL, command.call, command.slot, command.actor, run, batch)

    def watch(self, ref: ray.ObjectRef[Any], kind: int, key: int, slot: int, actor: int,
              run: Run | None = None, batch: list[Item] | None = None) -> None:
        """Have Ray report ``ref`` when it finishes, from its callback thread, with the value
        it deserialised there (``ObjectRef._on_completed``, what ``ref.future()`` is built
        on: without a ``concurrent.futures.Future`` per call, its lock and its callbacks)."""
        self.watched[ref] = (kind, key, slot, actor, run, batch)
        finish = functools.partial(self.inbox.finish, ref)
        if hasattr(ref, "_on_completed"):
            ref._on_completed(finish)
        else:  # a Ray without it: through the future
            ref.future().add_done_callback(functools.partial(_from_future, finish))
