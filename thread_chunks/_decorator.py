"""The ``@chunked`` decorator and the :class:`Chunked` object it returns."""

from __future__ import annotations

import copy
import importlib
import sys
import threading
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, MutableMapping
from contextlib import aclosing
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, TypeAlias, overload

from ray.actor import ActorHandle
from typing_extensions import Self, Unpack

from . import config
from ._actor import function_name
from ._chunker import Chunker, PathLike, pool_for
from ._engine import Pool, RunStats
from ._options import Options, RunOptions
from ._rows import RowMaker, TypedRow
from ._types import C, C_co, ChunkSize, G, P, R, Row

if TYPE_CHECKING:

    class _Proxy:
        def __init__(self, wrapped: Any, /) -> None: ...

else:
    from wrapt import ObjectProxy as _Proxy


Rows: TypeAlias = "Iterable[TypedRow[P] | Row]"
"""What ``.map`` and friends take: rows of this function (typed, from ``f.row``) or plain ones."""


class _Shared:
    """The pool behind one decorated function and every object ``.replace`` made from it."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.lock = threading.Lock()
        self.pool: Pool | None = None

    def get(self) -> Pool:
        with self.lock:
            if self.pool is None:
                self.pool = pool_for(self.options)
            return self.pool

    def close(self) -> None:
        with self.lock:
            if self.pool is not None:
                self.pool.close()


class Chunked(_Proxy, Generic[C_co]):
    """A function that can also run over many rows on Ray actors.

    Calling it runs the function locally, unchanged. ``.map(rows)`` runs it once per row on
    at most ``chunk_size`` actors at once and returns the results in input order;
    ``.imap(rows)`` yields them as they come; ``.amap``/``.aimap`` do the same for asyncio,
    and ``.row(...)`` makes a row typed by the function's signature. The actors are created
    on first use and kept for later calls; ``.close()`` (or leaving ``with f:``) stops them.

    Example::

        @chunked(chunk_size=4)
        def simulate(x: float, y: float) -> float: ...

        simulate(1.0, 2.0)                      # a plain local call
        simulate.map([[1.0, 2.0], [3.0, 4.0]])  # list[float], computed on actors
    """

    if TYPE_CHECKING:
        @property
        def __wrapped__(self) -> C_co: ...

        __name__: str
        __qualname__: str

    def __init__(self, func: C_co, options: Options, shared: _Shared | None = None) -> None:
        if not callable(func):
            raise TypeError(f"chunked: expected a callable, got {func!r}")
        super().__init__(func)
        self._self_options = options
        self._self_shared = shared if shared is not None else _Shared(options)
        self._self_lock = threading.Lock()
        self._self_chunker: Chunker | None = None
        self._self_rows: RowMaker | None = None

    # -- behaving as the function ----------------------------------------------------------

    def __call__(self: Chunked[Callable[P, R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.__wrapped__(*args, **kwargs)

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> Self: ...
    @overload
    def __get__(self, instance: object, owner: type[Any] | None = None) -> NoReturn: ...
    def __get__(self, instance: object, owner: type[Any] | None = None) -> Self:
        if instance is None:
            return self
        raise TypeError(
            f"@chunked does not support instance methods ({function_name(self.__wrapped__)}): "
            "the actors would need a copy of the instance. Decorate a module-level function "
            "or a staticmethod and pass the data it needs as arguments.")

    if not TYPE_CHECKING:
        # Our own class, not the wrapped object's (wrapt's default). With the function's,
        # isinstance(f, FunctionType) was True, and cloudpickle's reducer_override, which
        # runs before any reducer of ours, shipped a Chunked it cannot find by name (from
        # __main__, a notebook, a closure) by value as the plain function: an actor running
        # `outer` found `inner` without `.map`. Now cloudpickle uses _cloudpickle_reduce and
        # pickle __reduce_ex__. (inspect.isfunction(f) is False; inspect.signature, the names
        # and __wrapped__ still see the function.)
        @property
        def __class__(self) -> type:
            return type(self)

    def __reduce_ex__(self, protocol: Any) -> str | tuple[Any, ...]:
        # The standard pickler, as it pickles functions: by reference when the object is
        # found under its name (the worker imports the module and finds it), else by value.
        return self._reduce(lambda module: False)

    def _reduce(self, by_value: Callable[[str], bool]) -> str | tuple[Any, ...]:
        """By reference (its qualified name) when its module is importable, not one that
        ``by_value`` names, and holds this object under that name; else a fresh object for
        the same function and options, with a pool of its own (made on first use)."""
        qualname = getattr(self.__wrapped__, "__qualname__", None)  # None: a callable object
        module = getattr(self.__wrapped__, "__module__", None)
        if isinstance(qualname, str) and isinstance(module, str) and not by_value(module):
            found: object = sys.modules.get(module)
            for part in qualname.split("."):
                found = getattr(found, part, None)
            if found is self:
                return qualname
        return (Chunked, (self.__wrapped__, self._self_options))

    def __repr__(self) -> str:
        return f"<Chunked {function_name(self.__wrapped__)} chunk_size={self.chunk_size}>"

    # -- running on actors -------------------------------------------------------------------

    @property
    def options(self) -> Options:
        """The options this object was made with (never changed in place)."""
        return self._self_options

    @property
    def chunk_size(self) -> int:
        """How many calls run at once (for 'auto', decided when the actors are made; fewer
        than asked when the actors' resources do not fit the cluster)."""
        size = self._self_options.chunk_size
        pool = self._self_shared.pool
        if size == "auto" or pool is not None:
            return (pool or self._self_shared.get()).size
        return size or config.default_chunk_size

    @property
    def chunker(self) -> Chunker:
        """The :class:`Chunker` behind ``.map`` (made on first use; creates no actor)."""
        with self._self_lock:
            if self._self_chunker is None:
                self._self_chunker = Chunker._lazy(
                    self.__wrapped__, self._self_shared.get(), self._self_options)
            return self._self_chunker

    @property
    def actors(self) -> list[ActorHandle[Any]]:
        """The actor handles: created on first access, the same handles afterwards."""
        return self.chunker.actors

    @property
    def stats(self) -> RunStats:
        """What the last ``.map``/``.imap`` did (calls, retries, failures, timing)."""
        return self.chunker.stats

    def row(self: Chunked[Callable[P, Any]], /, *args: P.args, **kwargs: P.kwargs
            ) -> TypedRow[P]:
        """One row for ``.map``/``.imap``/``.amap``/``.aimap``, typed by this function's
        signature: mypy and pyright check its arguments as they check a call, and a row of
        another function is a type error there. It is bound to the signature now: a wrong
        call is a TypeError here, before anything runs.

        Example::

            simulate.map(simulate.row(x, y=y) for x, y in grid)
        """
        with self._self_lock:
            if self._self_rows is None:
                self._self_rows = RowMaker(self.__wrapped__, function_name(self.__wrapped__))
        return self._self_rows(args, kwargs)

    @overload
    def map(self: Chunked[Callable[P, R]], parameters: Rows[P], *,
            path: PathLike | None = None, progress_bar: bool | None = None,
            on_error: Literal["raise"] = "raise") -> list[R]: ...
    @overload
    def map(self: Chunked[Callable[P, R]], parameters: Rows[P], *,
            path: PathLike | None = None, progress_bar: bool | None = None,
            on_error: Literal["return"]) -> list[R | Exception]: ...
    def map(self: Chunked[Callable[P, R]], parameters: Rows[P], *,
            path: PathLike | None = None, progress_bar: bool | None = None,
            on_error: Literal["raise", "return"] = "raise") -> list[R] | list[R | Exception]:
        """Run the function once per row on the actors; results in input order.

        A row is a list or tuple of positional arguments, a dict of keyword arguments, or a
        typed row from :meth:`row`. ``path`` keeps a checkpoint there and resumes from it.
        With ``on_error="return"`` a failing row's exception takes its place in the list
        instead of being raised.
        """
        return self.chunker(parameters, progress_bar=progress_bar, path=path,
                            on_error=on_error)

    @overload
    def imap(self: Chunked[Callable[P, R]], parameters: Rows[P], *,
             ordered: bool = True, path: PathLike | None = None,
             progress_bar: bool | None = None,
             on_error: Literal["raise"] = "raise") -> Iterator[R]: ...
    @overload
    def imap(self: Chunked[Callable[P, R]], parameters: Rows[P], *,
             ordered: bool = True, path: PathLike | None = None,
             progress_bar: bool | None = None,
             on_error: Literal["return"]) -> Iterator[R | Exception]: ...
    def imap(self: Chunked[Callable[P, R]], parameters: Rows[P], *,
             ordered: bool = True, path: PathLike | None = None,
             progress_bar: bool | None = None,
             on_error: Literal["raise", "return"] = "raise"
             ) -> Iterator[R] | Iterator[R | Exception]:
        """Yield results as soon as they are ready: in input order when ``ordered`` (holding
        back only what arrived early), else in completion order. Input is read lazily;
        stopping early (``break``, dropping the iterator) stops the calls still running."""
        return self.chunker.imap(parameters, ordered=ordered, progress_bar=progress_bar,
                                 path=path, on_error=on_error)

    @overload
    async def amap(self: Chunked[Callable[P, R]], parameters: Rows[P], *,
                   path: PathLike | None = None, progress_bar: bool | None = None,
                   on_error: Literal["raise"] = "raise") -> list[R]: ...
    @overload
    async def amap(self: Chunked[Callable[P, R]], parameters: Rows[P], *,
                   path: PathLike | None = None, progress_bar: bool | None = None,
                   on_error: Literal["return"]) -> list[R | Exception]: ...
    async def amap(self: Chunked[Callable[P, R]], parameters: Rows[P], *,
                   path: PathLike | None = None, progress_bar: bool | None = None,
                   on_error: Literal["raise", "return"] = "raise"
                   ) -> list[R] | list[R | Exception]:
        """``await``-able :meth:`map`: the event loop keeps running while the calls do.

        Same rows, options and results as :meth:`map`, on the same actors and scheduler.
        Cancelling the awaiting task stops the calls in flight; the actors are replaced on
        next use. Ray, when not running yet, is started first (that start blocks).
        """
        results = self.chunker.aimap(parameters, progress_bar=progress_bar, path=path,
                                     on_error=on_error)
        async with aclosing(results):
            return [value async for value in results]

    @overload
    def aimap(self: Chunked[Callable[P, R]], parameters: Rows[P], *,
              ordered: bool = True, path: PathLike | None = None,
              progress_bar: bool | None = None,
              on_error: Literal["raise"] = "raise") -> AsyncGenerator[R, None]: ...
    @overload
    def aimap(self: Chunked[Callable[P, R]], parameters: Rows[P], *,
              ordered: bool = True, path: PathLike | None = None,
              progress_bar: bool | None = None,
              on_error: Literal["return"]) -> AsyncGenerator[R | Exception, None]: ...
    def aimap(self: Chunked[Callable[P, R]], parameters: Rows[P], *,
              ordered: bool = True, path: PathLike | None = None,
              progress_bar: bool | None = None,
              on_error: Literal["raise", "return"] = "raise"
              ) -> AsyncGenerator[R, None] | AsyncGenerator[R | Exception, None]:
        """``async for`` over the results, as :meth:`imap` yields them; the event loop keeps
        running while the calls do. Leaving early stops the calls still running: cancelling
        the task, ``aclose()``, or ``break`` inside ``async with contextlib.aclosing(...)``
        (a plain ``break`` stops them when the generator is collected)."""
        return self.chunker.aimap(parameters, ordered=ordered, progress_bar=progress_bar,
                                  path=path, on_error=on_error)

    def replace(self, func: G) -> Chunked[G]:
        """A new object for ``func`` with the same options, sharing these actors.

        ``func`` is copied to the actors once when it first runs; this object keeps running
        its own function (switching back copies it once more).
        """
        return Chunked(func, self._self_options, self._self_shared)

    def with_options(self, **changes: Any) -> Chunked[C_co]:
        """A new object with some options changed (and a pool of its own)."""
        return Chunked(self.__wrapped__, self._self_options.replace(**changes))

    def __copy__(self) -> Chunked[C_co]:
        """``copy.copy(f)``: a new object for the same function and options that shares
        these actors, as :meth:`replace` makes (closing either closes them for both)."""
        return Chunked(self.__wrapped__, self._self_options, self._self_shared)

    def __deepcopy__(self, memo: dict[int, Any]) -> Chunked[C_co]:
        """``copy.deepcopy(f)``: a new object with the same options and a pool of its own,
        for a deep copy of the function (a function is its own copy; a callable object is
        copied). The options are shared: they never change in place."""
        return Chunked(copy.deepcopy(self.__wrapped__, memo), self._self_options)

    def close(self) -> None:
        """Stop the actors; the next ``.map`` creates new ones."""
        self._self_shared.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _cloudpickle_reduce(by_value_modules: Callable[[], Iterable[str]]
                        ) -> Callable[[Chunked[Any]], str | tuple[Any, ...]]:
    """How a cloudpickle pickler reduces a Chunked: by its rule for functions, by value from
    ``__main__`` and from modules registered with ``register_pickle_by_value`` (and their
    submodules): a Ray worker cannot import those."""

    def by_value(module: str) -> bool:
        return module == "__main__" or any(
            module == name or module.startswith(name + ".") for name in by_value_modules())

    def reduce(obj: Chunked[Any]) -> str | tuple[Any, ...]:
        return obj._reduce(by_value)

    return reduce


def _register_with_cloudpickle() -> None:
    """Put :func:`_cloudpickle_reduce` in the dispatch table of cloudpickle's pickler and of
    the copy Ray ships with (as Ray registers its own types there). Only a cloudpickle
    pickler consults it; the standard pickler goes on calling ``Chunked.__reduce_ex__``."""
    for name in ("cloudpickle", "ray.cloudpickle"):
        try:
            module: Any = importlib.import_module(name)
        except ImportError:  # pragma: no cover - both are dependencies
            continue
        table = getattr(getattr(module, "Pickler", None), "dispatch_table", None)
        if isinstance(table, MutableMapping):
            registry = getattr(module, "list_registry_pickle_by_value", None)
            table[Chunked] = _cloudpickle_reduce(registry if callable(registry) else tuple)


_register_with_cloudpickle()


@overload
def chunked(func: C, /) -> Chunked[C]: ...
@overload
def chunked(
    *,
    chunk_size: ChunkSize | None = None,
    progress_bar: bool | None = None,
    **options: Unpack[RunOptions],
) -> Callable[[G], Chunked[G]]: ...
def chunked(
    func: Callable[..., Any] | None = None,
    /,
    *,
    chunk_size: ChunkSize | None = None,
    progress_bar: bool | None = None,
    **options: Unpack[RunOptions],
) -> Chunked[Any] | Callable[[G], Chunked[G]]:
    """Make a function runnable over many rows on Ray actors, ``chunk_size`` calls at a time.

    Use it bare (``@chunked``) or with options (``@chunked(chunk_size=4)``). Options are
    keyword-only and checked here: an unknown one is a TypeError, a bad value a
    ValueError or TypeError naming it. ``chunk``, ``Chunker`` and ``.with_options`` take the
    same options.

    Args:
        chunk_size: calls at once (actors), at most; default ``config.default_chunk_size``.
            ``"auto"`` sizes the pool to the Ray cluster: the available CPUs (with
            ``memory_per_call``, and the calls whose memory fits, if fewer).
        progress_bar: show a progress bar; default ``config.progress_bar``.
        actor_cls: a :class:`LabelledActor` subclass, plain or ``ray.remote``-decorated.
        actor_options: passed to Ray's ``.options()`` for each actor (``num_cpus``,
            ``num_gpus``, ``memory``, ``resources``, ``scheduling_strategy``, ...); checked
            here by Ray's own rules, without creating an actor.
        batch_size: rows per actor call; default automatic (grows only for calls much
            shorter than Ray's overhead), 1 turns batching off.
        retries: run a call that raised again, up to this many times.
        retry_on: only retry these exception classes.
        max_worker_deaths: a row whose worker dies this many times fails with
            :class:`WorkerDiedError`.
        timeout: seconds a call may run; a call running longer is stopped (its actor killed
            and replaced) and its row gets a TimeoutError. None (or ``float("inf")``): no
            limit.
        memory_per_call: bytes one call needs; each actor reserves it through Ray's
            ``memory`` resource, so Ray never places more calls on a node than fit.
        placement_timeout: seconds a run may go on with no actor able to run (Ray cannot
            place any) before it fails with :class:`ActorPlacementError`; default 600,
            None waits without limit. Actors still unplaced after 10 s are reported.
        max_buffered: rows read from the input and not yet handed out, at most; default
            4 x chunk_size x batch size (above a chunk_size of 32: 2 x chunk_size
            x batch size + 64 batches). Reading pauses when it is reached.
        max_buffered_bytes: bytes of results held back for order (behind a slow row), at
            most, counting the calls in flight at the size of the results seen; default
            256 MiB, None: no byte bound. Reading pauses when it is reached.
        memory_budget: bytes the calls running at once on one node may use together, each
            counted at the largest peak measured for its function (before any is known,
            ``memory_per_call``, else one call per node runs first); default ``"auto"``:
            what Ray's memory monitor allows on the node less what is in use there and a
            margin; None: no memory admission.
    """
    settings = Options.of("chunked", chunk_size, progress_bar, options)
    if func is not None:
        return Chunked(func, settings)

    def decorate(f: G) -> Chunked[G]:
        return Chunked(f, settings)

    return decorate
