"""The actors, created lazily, and the function they hold."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import ray
from ray.actor import ActorClass, ActorHandle

from ._actor import LabelledActor, NodeMemory, RemoteLabelledActor, function_name
from ._digest import Identity
from ._errors import ConcurrencyReducedWarning, ThreadChunksError, warn_user
from ._session import ensure_ray
from ._types import ChunkSize

log = logging.getLogger("thread_chunks")

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
        """Counts the functions the actors were given: a dispatcher's view of which actors
        are ready holds only while it is unchanged."""
        self.auto = ""
        """Why this size was chosen, when chunk_size was 'auto'."""
        self.dispatcher: object = None
        """The dispatcher of this pool's calls (set by ``Dispatcher.of``). It holds the pool
        too: a cycle the collector frees once the pool's owner drops it, actors and all."""
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
        self._actors: list[ActorHandle[Any] | None] = []
        if actors is not None:
            self._actors = list(actors)
        elif size != "auto":
            self._actors = [None] * size
        self._func: object = None
        self._identity: Identity | None = None  # the function's when it was put
        self._func_ref: ray.ObjectRef[Any] | None = None
        self._fitted = False
        self._holds: list[object] = [None] * len(self._actors)  # func ref each actor holds
        self._ready: list[bool] = [False] * len(self._actors)
        self._probes: list[ray.ObjectRef[Any] | None] = [None] * len(self._actors)
        self._nodes: list[NodeMemory | None] = [None] * len(self._actors)
        self._peaks: dict[object, int] = {}  # function -> the largest peak of its calls
        if size == "auto":
            self.start()

    @property
    def size(self) -> int:
        return len(self._actors)

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
                self._actors = [None] * size
            n = len(self._actors)
            self._holds, self._ready, self._probes = [None] * n, [False] * n, [None] * n
            self._nodes = [None] * n

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
            self._ready = [False] * self.size
            self._probes = [None] * self.size

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
            actor = self._actors[slot]
            if actor is None:
                actor = self._cls.options(**self._options).remote(self._func_ref)
                self._actors[slot] = actor
                self._holds[slot] = self._func_ref
            return actor

    def probe(self, slot: int) -> tuple[ActorHandle[Any], ray.ObjectRef[Any] | None]:
        """The actor in ``slot`` (created if missing) and a reference that resolves once it
        has started and holds the current function (to the :class:`NodeMemory` of its
        node); None when it is known to be ready.

        The same probe is shared by every run asking before it resolves. An actor holding an
        older function is sent the current one: calls sent afterwards by this process run
        after it (Ray keeps one caller's calls to an actor in order).
        """
        with self._lock:
            actor = self.handle(slot)
            if self._ready[slot]:
                return actor, None
            probe = self._probes[slot]
            if probe is None:  # it resolves to the NodeMemory of the actor's node
                if self._holds[slot] is self._func_ref or self._func_ref is None:
                    probe = actor._tc_ready.remote(None)
                else:
                    probe = actor._tc_ready.remote(self._func_ref)
                    self._holds[slot] = self._func_ref
                self._probes[slot] = probe
            return actor, probe

    def confirm(self, slot: int, actor: ActorHandle[Any], node: NodeMemory | None) -> bool:
        """The probe of ``actor`` resolved (telling its ``node``): it is ready, unless it was
        replaced meanwhile (then False)."""
        with self._lock:
            if slot >= self.size or self._actors[slot] is not actor:
                return False
            self._ready[slot] = True
            self._probes[slot] = None
            self._nodes[slot] = node
            return True

    def node(self, slot: int) -> NodeMemory | None:
        """The node of the ready actor in ``slot`` as its probe read it (None: not known)."""
        return self._nodes[slot] if slot < self.size else None

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
            for cut in (self._actors, self._holds, self._ready, self._probes, self._nodes):
                del cut[fits:]

    def discard(self, slot: int, actor: ActorHandle[Any] | None = None) -> bool:
        """Kill the actor in ``slot`` (only if it is still ``actor``, when given) so a fresh
        one is created on next use.

        Returns False (and does nothing) for actors the user handed in.
        """
        with self._lock:
            if not self.owned:
                return False
            current = self._actors[slot]
            if current is not None and (actor is None or current is actor):
                if ray.is_initialized():  # else Ray is gone and the actor with it
                    ray.kill(current)
                self._actors[slot] = None
                self._holds[slot], self._ready[slot], self._probes[slot] = None, False, None
                self._nodes[slot] = None
            return True

    def close(self) -> None:
        """Kill the actors we created; the next use creates new ones."""
        with self._lock:
            if self.owned and self._session and ray.is_initialized() \
                    and session_token() == self._session:
                for slot in range(self.size):
                    self.discard(slot)
