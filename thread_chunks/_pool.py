"""The actors, created lazily, and the function they hold."""

from __future__ import annotations

import logging
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import ray
from ray.actor import ActorClass, ActorHandle

from ._actor import LabelledActor, RemoteLabelledActor
from ._errors import ConcurrencyReducedWarning
from ._session import ensure_ray
from ._types import ChunkSize

log = logging.getLogger("thread_chunks")

def auto_chunk_size(memory_per_call: int) -> tuple[int, str]:
    """How many calls of ``memory_per_call`` bytes fit the Ray cluster at once, and why.

    min(CPUs available, calls whose ``memory`` fits): the memory is counted per node (a call
    cannot straddle two nodes) and capped by what the cluster has available now. At least 1.
    """
    available = ray.available_resources()
    cpus = int(available.get("CPU", 0))
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


def function_name(func: object) -> str:
    """The name shown in messages and recorded in checkpoints."""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return str(name) if name else type(func).__name__


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


class Pool:
    """``size`` actors holding one function at a time.

    Actors are created on first use and replaced when they die. The function is put into Ray's
    object store once and copied to the actors only when a different function is asked for.
    Actors handed in by the user are used as they are and never killed by us.
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
        self.auto = ""
        """Why this size was chosen, when chunk_size was 'auto'."""
        if size == "auto":
            assert memory_per_call is not None
            self.start()
            size, self.auto = auto_chunk_size(memory_per_call)
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._leases: Counter[int] = Counter()  # thread id -> runs in progress
        self._cls = remote_actor_class(actor_cls)
        self._options = dict(actor_options or {})
        if memory_per_call is not None:  # Ray then never packs more onto a node than fits
            self._options.setdefault("memory", memory_per_call)
        self.owned = actors is None
        self._actors: list[ActorHandle[Any] | None] = (
            list(actors) if actors is not None else [None] * size)
        self._func: object = None
        self._func_ref: ray.ObjectRef[Any] | None = None
        self._fitted = False

    @property
    def size(self) -> int:
        return len(self._actors)

    @property
    def function(self) -> object:
        """The function the actors hold, when we put it there; None for adopted actors."""
        return self._func

    def start(self) -> None:
        """Make sure Ray is running (remembering whether we started it)."""
        if ensure_ray():
            self.started_ray = True

    def use(self, func: Callable[..., Any] | None) -> None:
        """Make the actors hold ``func`` (no copy when they already do; None keeps theirs)."""
        with self._lock:
            self.fit()
            if func is None or func is self._func:
                return
            self._wait_for_runs(func)
            self.start()
            try:
                ref = ray.put(func)
            except Exception as exc:
                raise TypeError(
                    f"cannot send function {function_name(func)!r} to Ray workers: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self._func, self._func_ref = func, ref
            live = [actor for actor in self._actors if actor is not None]
            ray.get([actor.set_func.remote(ref) for actor in live])

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
    def lease(self, func: Callable[..., Any] | None) -> Iterator[None]:
        """Hold the actors to ``func`` for one run: other threads wanting another function
        wait until it ends (runs of the same function share the actors)."""
        me = threading.get_ident()
        with self._lock:
            self.use(func)
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
        """The actor in ``slot``, created now if there is none."""
        with self._lock:
            actor = self._actors[slot]
            if actor is None:
                self.start()
                actor = self._cls.options(**self._options).remote(self._func_ref)
                self._actors[slot] = actor
            return actor

    def handles(self) -> list[ActorHandle[Any]]:
        """All actors, created now where missing."""
        with self._lock:
            self.fit()
            return [self.handle(slot) for slot in range(self.size)]

    def fit(self) -> None:
        """Once, before the first actor: check the resources ``actor_options`` ask for.

        No node able to hold one actor is a ValueError naming what was asked for. Fewer
        actors fitting the cluster than ``size`` shrinks the pool to what fits, with a
        ConcurrencyReducedWarning — Ray would otherwise leave the others waiting forever.
        Only explicit requests count (``num_cpus``, ``num_gpus``, ``memory``, ``resources``).
        """
        if self._fitted or not self.owned:
            return
        self.start()
        self._fitted = True
        demand = explicit_demand(self._options)
        if not demand:
            return
        fits = sum(min(int(node["Resources"].get(name, 0.0) / amount + 1e-9)
                       for name, amount in demand.items())
                   for node in ray.nodes() if node.get("Alive"))
        asked = ", ".join(f"{name}={amount:g}" for name, amount in demand.items())
        if fits == 0:
            raise ValueError(
                f"actor_options: no node of the Ray cluster can hold an actor asking for "
                f"{asked}; change actor_options or add such a node")
        if fits < self.size:
            warnings.warn(
                f"only {fits} actors asking for {asked} fit the Ray cluster at once; running "
                f"{fits} calls at once instead of chunk_size={self.size}",
                ConcurrencyReducedWarning, stacklevel=4)
            del self._actors[fits:]

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
                actor = current
                if ray.is_initialized():  # else Ray is gone and the actor with it
                    ray.kill(actor)
                self._actors[slot] = None
            return True

    def close(self) -> None:
        """Kill the actors we created; the next use creates new ones."""
        with self._lock:
            if self.owned:
                for slot in range(self.size):
                    self.discard(slot)
