"""Chunker and chunk(): the classic thread-chunks API on the shared scheduler."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, closing
from types import TracebackType
from typing import Any

import ray
from ray.actor import ActorHandle

from . import config
from ._actor import Item, Record
from ._checkpoint import Store, body_digest
from ._pool import ChunkSize, Pool, function_name
from ._progress import Progress
from ._rows import items, iterate
from ._run import Policy, RunStats, run
from ._session import ray_session
from ._types import OnError

PathLike = str | os.PathLike[str]

def check_positive(name: str, value: object, allow_none: bool = False) -> None:
    """ValueError unless ``value`` is a positive int (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def check_chunk_size(chunk_size: object, memory_per_call: object) -> None:
    """ValueError unless chunk_size is a positive int, None, or 'auto' with a memory budget."""
    check_positive("memory_per_call", memory_per_call, allow_none=True)
    if chunk_size == "auto":
        if memory_per_call is None:
            raise ValueError("chunk_size='auto' needs memory_per_call=<bytes one call needs>")
        return
    check_positive("chunk_size", chunk_size, allow_none=True)


def check_on_error(on_error: object) -> None:
    if on_error not in ("raise", "return"):
        raise ValueError(f"on_error: expected 'raise' or 'return', got {on_error!r}")


def make_policy(retries: int, retry_on: type[BaseException] | tuple[type[BaseException], ...],
                max_worker_deaths: int, timeout: float | None = None) -> Policy:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries: expected an int >= 0, got {retries!r}")
    kinds = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not all(isinstance(k, type) and issubclass(k, BaseException) for k in kinds):
        raise TypeError(f"retry_on: expected exception classes, got {retry_on!r}")
    check_positive("max_worker_deaths", max_worker_deaths)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise ValueError(f"timeout: expected a number of seconds > 0 or None, got {timeout!r}")
    return Policy(retries=retries, retry_on=kinds, max_worker_deaths=max_worker_deaths,
                  timeout=None if timeout is None else float(timeout))


class _Plan:
    """One prepared run: its rows (validated where possible), checkpoint and results so far."""

    def __init__(self, source: Iterator[Item], total: int | None, done: dict[int, Any],
                 store: Store | None, name: str, rows: dict[int, Item] | None) -> None:
        self.source = source
        self.total = total
        self.done = done
        self.store = store
        self.name = name
        self.rows = rows


class Chunker:
    """Actors pre-loaded with a function, reused across calls.

    ``Chunker(func)`` keeps ``chunk_size`` actors holding ``func``; calling it runs ``func``
    over the rows of ``parameters`` with at most ``chunk_size`` calls at once and returns the
    results in input order. The function is copied to the actors once, not per call; passing
    another ``func`` to a call copies that one and later calls keep using it.

    Example::

        chunker = Chunker(simulate, chunk_size=4)
        first = chunker([[1.0, 2.0], [3.0, 4.0]])
        second = chunker([{"x": 5.0, "y": 6.0}])

    Ray is started with ``config.ray_config`` if it is not running; a Chunker that started it
    shuts it down when deleted or closed, unless ``persistent=True``. A Ray you started is
    never shut down.

    Raises:
        ValueError: ``func`` and ``actors`` both given or both missing; ``chunk_size`` not a
            positive int, or not ``len(actors)``.
        TypeError: ``actor_cls`` is not a LabelledActor subclass; ``func`` cannot be pickled.
    """

    def __init__(
        self,
        func: Callable[..., Any] | None = None,
        actors: Sequence[ActorHandle[Any]] | None = None,
        chunk_size: ChunkSize | None = None,
        progress_bar: bool | None = None,
        persistent: bool = False,
        path: PathLike | None = None,
        *,
        actor_cls: object = None,
        actor_options: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        retries: int = 0,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        max_worker_deaths: int = 3,
        timeout: float | None = None,
        memory_per_call: int | None = None,
    ) -> None:
        if (func is None) == (actors is None):
            raise ValueError("Either `func` or `actors` must be specified, but not both.")
        if actors is not None:
            actors = list(actors)
            if chunk_size is None:
                chunk_size = len(actors)
        elif chunk_size is None:
            chunk_size = config.default_chunk_size
        check_chunk_size(chunk_size, memory_per_call)
        if actors is not None and len(actors) != chunk_size:
            raise ValueError(
                f"chunk_size: {chunk_size} does not agree with the number of actors "
                f"({len(actors)}); len(actors) must equal chunk_size")
        check_positive("batch_size", batch_size, allow_none=True)
        if func is not None and not callable(func):
            raise TypeError(f"func: expected a callable, got {func!r}")
        self._policy = make_policy(retries, retry_on, max_worker_deaths, timeout)
        self._batch_size = batch_size
        self._pool = Pool(chunk_size, actor_cls=actor_cls, actor_options=actor_options,
                          actors=actors, memory_per_call=memory_per_call)
        self.progress_bar: bool = config.progress_bar if progress_bar is None else progress_bar
        self.persistent: bool = persistent
        self.path: PathLike | None = path
        self.stats = RunStats()
        """Statistics of the last run."""
        self._func = func
        self._pool.start()
        self._pool.use(func)

    @classmethod
    def _lazy(cls, func: Callable[..., Any], pool: Pool, **options: Any) -> Chunker:
        """A Chunker on an existing pool that starts nothing until it is used."""
        self = cls.__new__(cls)
        self._policy = make_policy(
            options.pop("retries", 0), options.pop("retry_on", Exception),
            options.pop("max_worker_deaths", 3), options.pop("timeout", None))
        self._batch_size = options.pop("batch_size", None)
        self._pool = pool
        progress_bar = options.pop("progress_bar", None)
        self.progress_bar = config.progress_bar if progress_bar is None else progress_bar
        self.persistent = True
        self.path = None
        self.stats = RunStats()
        self._func = func
        return self

    @property
    def actors(self) -> list[ActorHandle[Any]]:
        """The actor handles (created now if they do not exist yet)."""
        if self._pool.function is None:  # new actors get our function; never a swap here
            self._pool.use(self._func)
        return self._pool.handles()

    @property
    def chunk_size(self) -> int:
        """How many calls run at once: the number of actors."""
        return self._pool.size

    def __call__(
        self,
        parameters: Iterable[Any],
        func: Callable[..., Any] | None = None,
        progress_bar: bool | None = None,
        path: PathLike | None = None,
        *,
        on_error: OnError = "raise",
    ) -> list[Any]:
        """Run the function over every row; results in input order.

        Rows are lists or tuples (positional arguments) or dicts (keyword arguments).
        ``parameters`` may be any iterable, a generator included (read lazily).
        """
        return list(self.imap(parameters, func, progress_bar=progress_bar, path=path,
                              on_error=on_error))

    def imap(
        self,
        parameters: Iterable[Any],
        func: Callable[..., Any] | None = None,
        *,
        ordered: bool = True,
        progress_bar: bool | None = None,
        path: PathLike | None = None,
        on_error: OnError = "raise",
    ) -> Iterator[Any]:
        """Like calling the Chunker, but yields each result as soon as it is ready.

        In input order when ``ordered`` (holding back only what arrived early), else in
        completion order. Stopping early (``break``, or dropping the iterator) stops the calls
        still running.
        """
        check_on_error(on_error)
        plan = self._prepare(parameters, func, path)
        show = self.progress_bar if progress_bar is None else progress_bar
        return self._execute(plan, ordered, show, on_error)

    def _prepare(self, parameters: Iterable[Any], func: Callable[..., Any] | None,
                 path: PathLike | None) -> _Plan:
        rows = iterate(parameters)
        if func is not None:
            if not callable(func):
                raise TypeError(f"func: expected a callable, got {func!r}")
            self._func = func
        self._pool.use(self._func)
        held = self._func
        path = self.path if path is None else path
        name = function_name(held) if held is not None else "function"
        total = len(parameters) if isinstance(parameters, Sequence) else None
        if path is None and total is None:
            return _Plan(items(rows), None, {}, None, name, None)
        materialised = list(rows)
        listed = list(items(materialised))  # validates every row before any call starts
        if path is None:
            return _Plan(iter(listed), len(listed), {}, None, name, None)
        if held is None:  # actors handed in: ask them what they hold
            held = ray.get(self._pool.handle(0).get_func.remote())
            name = function_name(held)
        store, done = Store.open(path, getattr(held, "__name__", name), body_digest(held),
                                 materialised)
        source = iter([item for item in listed if item[0] not in done])
        return _Plan(source, len(listed), done, store, name, None)

    def _execute(self, plan: _Plan, ordered: bool, show: bool, on_error: OnError
                 ) -> Iterator[Any]:
        stats = RunStats()
        self.stats = stats
        with ExitStack() as stack:
            if plan.store is not None:
                stack.callback(plan.store.close)
            stack.enter_context(self._pool.lease(self._func))
            desc = plan.name + (f" [auto: {self.chunk_size} at once]" if self._pool.auto else "")
            progress = stack.enter_context(
                Progress(show, plan.total, initial=len(plan.done), desc=desc))
            records = stack.enter_context(closing(run(
                self._pool, plan.source, ordered=ordered, batch_size=self._batch_size,
                progress=progress, store=plan.store, policy=self._policy, stats=stats,
                name=plan.name)))
            if not plan.done:
                for record in records:
                    yield _value(record, on_error)
            elif ordered:
                assert plan.total is not None
                for index in range(plan.total):
                    if index in plan.done:
                        yield plan.done.pop(index)
                    else:
                        yield _value(next(records), on_error)
            else:
                while plan.done:  # what is recorded is ready first, in input order
                    yield plan.done.pop(next(iter(plan.done)))
                for record in records:
                    yield _value(record, on_error)

    def close(self) -> None:
        """Stop the actors this Chunker created (new ones are made on next use), and shut
        down Ray if this Chunker started it and is not persistent."""
        self._pool.close()
        self._release_ray()

    def _release_ray(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None and pool.started_ray and not self.persistent:
            pool.started_ray = False
            if ray.is_initialized():
                ray.shutdown()

    def __enter__(self) -> Chunker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        self._release_ray()


def _value(record: Record, on_error: OnError) -> Any:
    if record[1]:
        return record[2]
    if on_error == "raise":
        raise record[2]
    return record[2]


def chunk(
    func: Callable[..., Any] | None,
    parameters: Iterable[Any],
    actors: Sequence[ActorHandle[Any]] | None = None,
    chunk_size: ChunkSize | None = None,
    progress_bar: bool | None = None,
    path: PathLike | None = None,
    *,
    on_error: OnError = "raise",
    actor_cls: object = None,
    actor_options: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    max_worker_deaths: int = 3,
    timeout: float | None = None,
    memory_per_call: int | None = None,
) -> list[Any]:
    """Call ``func`` once per row of ``parameters``, at most ``chunk_size`` calls at once.

    ``output[i]`` is the result of row ``i``. Rows are lists or tuples (positional arguments)
    or dicts (keyword arguments). With ``actors`` (and ``func=None``) the function they hold
    is run; with both, ``func`` is stored in them first. Ray is started with
    ``config.ray_config`` if it is not running, and shut down afterwards only in that case.

    Example::

        squares = chunk(pow, [[1, 2], [2, 2], [3, 2]], chunk_size=2)  # [1, 4, 9]

    Raises:
        ValueError: ``func`` and ``actors`` both None; ``chunk_size`` is not a positive int or
            disagrees with ``len(actors)``.
        TypeError: ``parameters`` is not an iterable of rows, or a row is not a list, tuple
            or dict (the message names the row).
    """
    if func is None and actors is None:
        raise ValueError("`func` and `actors` cannot both be None.")
    check_on_error(on_error)
    if actors is not None and chunk_size is None:
        chunk_size = len(actors)
    options: dict[str, Any] = dict(
        chunk_size=chunk_size, progress_bar=progress_bar, persistent=True, path=path,
        actor_cls=actor_cls, actor_options=actor_options, batch_size=batch_size,
        retries=retries, retry_on=retry_on, max_worker_deaths=max_worker_deaths,
        timeout=timeout, memory_per_call=memory_per_call)
    iterate(parameters)  # a TypeError before Ray starts
    with ray_session():
        if actors is None:
            chunker = Chunker(func, **options)
            with chunker:
                return chunker(parameters, on_error=on_error)
        chunker = Chunker(actors=actors, **options)
        return chunker(parameters, func, on_error=on_error)
