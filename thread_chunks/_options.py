"""The run options shared by ``@chunked``, ``chunk`` and ``Chunker``: declared once, validated
once, kept in one frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

from ._digest import identify
from ._pool import remote_actor_class
from ._run import DEFAULT_MAX_BUFFERED_BYTES, Policy
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
    """Seconds a call may run before its actor is stopped."""
    memory_per_call: int | None
    """Bytes one call needs: reserved per actor through Ray's ``memory`` resource."""
    placement_timeout: float | None
    """Seconds a run may go on with no actor able to run (none placed by Ray) before it fails
    with ActorPlacementError; None waits without limit."""
    max_buffered: int | None
    """Rows read from the input but not yet handed out, at most (reading pauses there, also
    while a slow row holds up the order); None: 4 x chunk_size x the batch size."""
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
        values["actor_options"] = dict(values.get("actor_options") or {})
        return cls(chunk_size=chunk_size, progress_bar=progress_bar, **values)

    def __post_init__(self) -> None:
        check_positive("memory_per_call", self.memory_per_call, allow_none=True)
        if self.chunk_size != "auto":
            check_positive("chunk_size", self.chunk_size, allow_none=True)
        if self.memory_budget != "auto":
            try:
                check_positive("memory_budget", self.memory_budget, allow_none=True)
            except ValueError:
                raise ValueError(f"memory_budget: expected a positive number of bytes, 'auto' "
                                 f"or None, got {self.memory_budget!r}") from None
        check_positive("batch_size", self.batch_size, allow_none=True)
        check_positive("max_buffered", self.max_buffered, allow_none=True)
        check_positive("max_buffered_bytes", self.max_buffered_bytes, allow_none=True)
        remote_actor_class(self.actor_cls)
        check_depends_on(self.depends_on)
        if not isinstance(self.actor_options, Mapping):
            raise TypeError(f"actor_options: expected a mapping, got {self.actor_options!r}")
        if self.progress_bar is not None and not isinstance(self.progress_bar, bool):
            raise TypeError(f"progress_bar: expected a bool or None, got {self.progress_bar!r}")
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
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ValueError(
                f"timeout: expected a number of seconds > 0 or None, got {timeout!r}")
        placement = self.placement_timeout
        if placement is not None and (isinstance(placement, bool) or not isinstance(
                placement, (int, float)) or placement <= 0):
            raise ValueError(f"placement_timeout: expected a number of seconds > 0 or None, "
                             f"got {placement!r}")
        return Policy(retries=retries, retry_on=kinds, max_worker_deaths=self.max_worker_deaths,
                      timeout=None if timeout is None else float(timeout),
                      placement_timeout=None if placement is None else float(placement),
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
