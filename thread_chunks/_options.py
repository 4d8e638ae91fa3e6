"""The run options shared by ``@chunked``, ``chunk`` and ``Chunker``: declared once, validated
once, kept in one frozen object."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

from ray.actor import ActorClass, ActorHandle

from ._digest import identify
from ._engine import DEFAULT_MAX_BUFFERED_BYTES, Policy, remote_actor_class
from ._types import ChunkSize, MemoryBudget, RetryOn


class RunOptions(TypedDict, total=False):
    """Keyword options accepted by ``chunked(...)``, ``chunk(...)`` and ``Chunker(...)``."""

    actor_cls: object
    """A LabelledActor subclass, plain or ``ray.remote``-decorated."""
    actor_options: Mapping[str, Any] | None
    """Passed to Ray's ``.options()`` for each actor."""
    batch_size: int | None
    """Rows per actor call; None: automatic; 1: no batching."""
    retries: int
    """Run a call that raised again, up to this many times."""
    retry_on: RetryOn
    """Only retry these exception classes."""
    max_worker_deaths: int
    """A row whose worker dies this many times fails with WorkerDiedError."""
    timeout: float | None
    """Seconds a call may run before its actor is stopped; None (or inf): no limit."""
    memory_per_call: int | None
    """Bytes one call needs: reserved per actor through Ray's ``memory`` resource."""
    placement_timeout: float | None
    """Seconds a run may go on with no actor able to run (none placed by Ray) before it fails
    with ActorPlacementError; None waits without limit."""
    max_buffered: int | None
    """Rows read from the input but not yet handed out, at most (reading pauses there, also
    while a slow row holds up the order); None: 4 x chunk_size x the batch size (above a
    chunk_size of 32: 2 x chunk_size + 64 batches)."""
    max_buffered_bytes: int | None
    """Bytes of results held back for order, at most, the calls in flight counted at the size
    of the results seen so far (reading pauses there); default 256 MiB; None: no byte bound."""
    memory_budget: MemoryBudget
    """Bytes the calls running at once on one node may use together, each counted at its
    function's measured peak; "auto" (default): what Ray's memory monitor allows on the node
    less what is in use there, less a margin; None: no memory admission."""
    depends_on: object
    """What the function depends on that thread-chunks cannot see (a data file's version, a
    ``pathlib.Path`` digested by its content, an external program's version): part of the
    identity a checkpoint reuses results for. Plain data, encodable."""


def check_positive(name: str, value: object, allow_none: bool = False) -> None:
    """ValueError unless ``value`` is a positive int (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _depends_probe() -> None:
    """The function ``depends_on`` is checked with (its identity is all that is computed)."""


def check_depends_on(value: object) -> None:
    """TypeError unless ``value`` can be part of an identity (None: nothing declared). A
    path is digested by its content when a run starts: it need not exist yet."""
    if value is None or isinstance(value, os.PathLike):
        return
    try:
        known = identify(_depends_probe, depends_on=value).digest is not None
    except Exception:
        known = False
    if not known:
        raise TypeError(
            f"depends_on: expected a value that can be encoded (plain data: str, numbers, "
            f"tuples, dicts, a pathlib.Path ...), got {type(value).__name__} {value!r}")


def check_on_error(on_error: object) -> None:
    if on_error not in ("raise", "return"):
        raise ValueError(f"on_error: expected 'raise' or 'return', got {on_error!r}")


def check_bool(name: str, value: object, allow_none: bool = False) -> None:
    """TypeError unless ``value`` is True or False (or None when allowed): a truthy string
    such as ``"no"`` is refused, not read as True."""
    if isinstance(value, bool) or (value is None and allow_none):
        return
    raise TypeError(f"{name}: expected {'a bool or None' if allow_none else 'a bool'}, "
                    f"got {value!r}")


def check_path(value: object) -> None:
    """TypeError unless ``value`` (a checkpoint path) is None, a str or an os.PathLike."""
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike (or None), got {value!r}")


def check_actors(actors: object) -> list[ActorHandle[Any]]:
    """``actors`` (handed in by the user) as a list of Ray actor handles, or an error naming
    the argument and, for a bad element, its index."""
    if isinstance(actors, (str, bytes)) or not isinstance(actors, Iterable):
        raise TypeError(f"actors: expected a sequence of Ray actor handles, got {actors!r}")
    handles = list(actors)
    for index, actor in enumerate(handles):
        if not isinstance(actor, ActorHandle):
            raise TypeError(f"actors[{index}]: expected a Ray actor handle (of a "
                            f"LabelledActor), got {actor!r}")
    if not handles:
        raise ValueError("actors: expected at least one Ray actor handle, got none")
    return handles


def seconds(name: str, value: object) -> float | None:
    """A time limit in seconds: None (and ``float("inf")``) for no limit, else a number > 0
    that a wait can take (at most ``threading.TIMEOUT_MAX``); a ValueError naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a number of seconds > 0 or None (no limit), "
                         f"got {value!r}")  # NaN fails ``value > 0`` too
    if value == math.inf:
        return None
    if value > threading.TIMEOUT_MAX:
        raise ValueError(f"{name}: expected at most {threading.TIMEOUT_MAX:.0f} seconds "
                         f"(threading.TIMEOUT_MAX), got {value!r}; None (or inf) is no limit")
    return float(value)


def check_actor_options(actor_cls: ActorClass, actor_options: Mapping[str, Any]) -> None:
    """``actor_options`` as Ray's ``.options()`` checks them (names, types and signs), before
    any actor is made and without Ray running: an error naming ``actor_options`` and the key.
    """
    bad = [key for key in actor_options if not isinstance(key, str)]
    if bad:
        raise TypeError(f"actor_options: expected option names (str), got key {bad[0]!r}")
    amounts = {key: actor_options[key] for key in ("num_cpus", "num_gpus", "memory")
               if actor_options.get(key) is not None}
    resources = actor_options.get("resources")
    if isinstance(resources, Mapping):  # the amounts we count actors by: Ray's own errors
        for name, amount in resources.items():  # for these do not name the key
            if not isinstance(name, str):
                raise TypeError(f"actor_options: resources: expected resource names (str), "
                                f"got {name!r}")
            amounts[f"resources[{name!r}]"] = amount
    for key, amount in amounts.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise TypeError(f"actor_options: {key}: expected a number >= 0, got {amount!r}")
        if not 0 <= amount < math.inf:
            raise ValueError(f"actor_options: {key}: expected a finite number >= 0, got "
                             f"{amount!r}")
    try:
        actor_cls.options(**actor_options)
    except (TypeError, ValueError, OverflowError) as exc:
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        raise kind(f"actor_options: {exc}") from None


@dataclass(frozen=True)
class Options:
    """Validated run options (never changed in place: a changed option is a new object)."""

    chunk_size: ChunkSize | None = None
    progress_bar: bool | None = None
    actor_cls: object = None
    actor_options: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    retries: int = 0
    retry_on: RetryOn = Exception
    max_worker_deaths: int = 3
    timeout: float | None = None
    memory_per_call: int | None = None
    placement_timeout: float | None = 600.0
    max_buffered: int | None = None
    max_buffered_bytes: int | None = DEFAULT_MAX_BUFFERED_BYTES
    memory_budget: MemoryBudget = "auto"
    depends_on: object = None

    @classmethod
    def of(cls, where: str, chunk_size: ChunkSize | None, progress_bar: bool | None,
           options: Mapping[str, Any]) -> Options:
        """Options from keyword arguments, with a TypeError naming an unknown one."""
        known = RunOptions.__annotations__
        unknown = [key for key in options if key not in known]
        if unknown:
            raise TypeError(f"{where}() got an unexpected option {unknown[0]!r}; the options "
                            f"are chunk_size, progress_bar, {', '.join(known)}")
        values = dict(options)
        actor_options = values.get("actor_options")
        if actor_options is not None and not isinstance(actor_options, Mapping):
            raise TypeError(f"actor_options: expected a mapping of Ray actor options (or "
                            f"None), got {actor_options!r}")
        values["actor_options"] = dict(actor_options or {})
        return cls(chunk_size=chunk_size, progress_bar=progress_bar, **values)

    def __post_init__(self) -> None:
        check_positive("memory_per_call", self.memory_per_call, allow_none=True)
        if self.chunk_size != "auto":
            try:
                check_positive("chunk_size", self.chunk_size, allow_none=True)
            except ValueError:
                raise ValueError(f"chunk_size: expected a positive int or 'auto', got "
                                 f"{self.chunk_size!r}") from None
        if self.memory_budget != "auto":
            try:
                check_positive("memory_budget", self.memory_budget, allow_none=True)
            except ValueError:
                raise ValueError(f"memory_budget: expected a positive number of bytes, 'auto' "
                                 f"or None, got {self.memory_budget!r}") from None
        check_positive("batch_size", self.batch_size, allow_none=True)
        check_positive("max_buffered", self.max_buffered, allow_none=True)
        check_positive("max_buffered_bytes", self.max_buffered_bytes, allow_none=True)
        actor_cls = remote_actor_class(self.actor_cls)
        check_depends_on(self.depends_on)
        if not isinstance(self.actor_options, Mapping):
            raise TypeError(f"actor_options: expected a mapping of Ray actor options, got "
                            f"{self.actor_options!r}")
        check_actor_options(actor_cls, self.actor_options)
        check_bool("progress_bar", self.progress_bar, allow_none=True)
        self.policy()

    def policy(self) -> Policy:
        """How the scheduler handles failures, from these options."""
        retries, timeout = self.retries, self.timeout
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries: expected an int >= 0, got {retries!r}")
        kinds = self.retry_on if isinstance(self.retry_on, tuple) else (self.retry_on,)
        if not all(isinstance(k, type) and issubclass(k, BaseException) for k in kinds):
            raise TypeError(f"retry_on: expected exception classes, got {self.retry_on!r}")
        check_positive("max_worker_deaths", self.max_worker_deaths)
        return Policy(retries=retries, retry_on=kinds, max_worker_deaths=self.max_worker_deaths,
                      timeout=seconds("timeout", timeout),
                      placement_timeout=seconds("placement_timeout", self.placement_timeout),
                      max_buffered=self.max_buffered,
                      max_buffered_bytes=self.max_buffered_bytes,
                      memory_budget=self.memory_budget)

    def replace(self, **changes: Any) -> Options:
        """A copy with some options changed (validated again)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        unknown = [key for key in changes if key not in values]
        if unknown:
            raise TypeError(f"with_options() got an unexpected option {unknown[0]!r}")
        return Options(**{**values, **changes})
