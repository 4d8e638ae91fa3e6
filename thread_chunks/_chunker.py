"""Chunker and chunk(): the classic thread-chunks API on the shared scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import os
import pickle
from array import array
from bisect import bisect_left
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, aclosing, closing
from dataclasses import dataclass
from itertools import chain, compress, repeat
from types import TracebackType
from typing import Any

import ray
from ray.actor import ActorHandle
from typing_extensions import Unpack

from . import config
from ._actor import OK, ROW, VALUE, Item, Outcome, function_name, unpack
from ._checkpoint import Store
from ._digest import Identity, identify
from ._engine import Pool, Run, RunStats
from ._engine.drive import arun, run
from ._errors import Held, ResultError, holding_warnings, warn_user
from ._options import (
    Options,
    RunOptions,
    check_actors,
    check_bool,
    check_on_error,
    check_path,
)
from ._progress import Progress
from ._rows import Calls, Rows, iterate
from ._session import ray_session
from ._types import ChunkSize, OnError

PathLike = str | os.PathLike[str]

@dataclass
class _Plan:
    """One prepared run: every row is either already known (reused from the checkpoint) or in
    ``source``, the rows sent to ``run``."""

    source: Iterator[Item]
    total: int | None
    store: Store | None
    name: str
    identity: Identity | None = None
    """The function's identity, computed once for this map (what the actors must hold)."""

    @property
    def reused(self) -> int:
        return 0 if self.store is None else len(self.store.reused)

    def known(self) -> Iterator[tuple[list[int], list[bytes]]]:
        """The reused rows, ascending, and their pickled results, a chunk at a time, read as
        they are taken."""
        return iter(()) if self.store is None else self.store.reused_chunks()


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
            positive int or 'auto', or not ``len(actors)``.
        TypeError: ``actor_cls`` is not a LabelledActor subclass; ``func`` cannot be pickled;
            ``actors`` holds something that is not a Ray actor handle (the message names its
            index); ``path`` is not a str or os.PathLike; ``progress_bar`` or
            ``persistent`` is not a bool.
    """

    def __init__(
        self,
        func: Callable[..., Any] | None = None,
        actors: Sequence[ActorHandle[Any]] | None = None,
        chunk_size: ChunkSize | None = None,
        progress_bar: bool | None = None,
        persistent: bool = False,
        path: PathLike | None = None,
        **options: Unpack[RunOptions],
    ) -> None:
        if (func is None) == (actors is None):
            raise ValueError("Either `func` or `actors` must be specified, but not both.")
        if func is not None and not callable(func):
            raise TypeError(f"func: expected a callable, got {func!r}")
        check_bool("persistent", persistent)
        check_path(path)
        if actors is not None:
            actors = check_actors(actors)
            if chunk_size is None:
                chunk_size = len(actors)
        settings = Options.of("Chunker", chunk_size, progress_bar, options)
        if actors is not None and len(actors) != chunk_size:
            raise ValueError(
                f"chunk_size: {chunk_size} does not agree with the number of actors "
                f"({len(actors)}); len(actors) must equal chunk_size")
        self._setup(func, settings, pool_for(settings, actors), persistent, path)
        self._pool.start()
        self._pool.use(func, self._identify(func))

    def _setup(self, func: Callable[..., Any] | None, settings: Options, pool: Pool,
               persistent: bool, path: PathLike | None) -> None:
        self._func = func
        self._settings = settings
        self._policy = settings.policy()
        self._pool = pool
        self.progress_bar: bool = (config.progress_bar if settings.progress_bar is None
                                   else settings.progress_bar)
        self.persistent: bool = persistent
        self.path: PathLike | None = path
        self.stats = RunStats()
        """Statistics of the last run."""

    @classmethod
    def _lazy(cls, func: Callable[..., Any], pool: Pool, settings: Options) -> Chunker:
        """A Chunker on an existing pool that starts nothing until it is used."""
        self = cls.__new__(cls)
        self._setup(func, settings, pool, True, None)
        return self

    @property
    def actors(self) -> list[ActorHandle[Any]]:
        """The actor handles (created now if they do not exist yet)."""
        if self._pool.function is None:  # new actors get our function; never a swap here
            self._pool.use(self._func, self._identify(self._func))
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
        _check_call(ordered, progress_bar, path, on_error)
        plan = self._prepare(parameters, func, path)
        show = self.progress_bar if progress_bar is None else progress_bar
        return self._execute(plan, ordered, show, on_error)

    def _prepare(self, parameters: Iterable[Any], func: Callable[..., Any] | None,
                 path: PathLike | None) -> _Plan:
        return self._plan(parameters, path, self._hold(func))

    def _identify(self, func: object) -> Identity | None:
        """``func``'s identity with this Chunker's ``actor_cls`` and ``depends_on`` (never
        raising: unknown when it cannot be computed); None for no function (actors handed
        in hold theirs)."""
        if func is None:
            return None
        try:
            return identify(func, actor_cls=self._settings.actor_cls,
                            depends_on=self._settings.depends_on)
        except Exception as exc:  # unknown: a miss, and the function is sent again
            return Identity(None, (), f"{type(exc).__name__}: {exc}")

    def _hold(self, func: Callable[..., Any] | None) -> Identity | None:
        """Make ``func`` (when given) the function the actors run (Ray starts if needed), as
        it is now: its identity is computed (once per map) and the actors get it again when
        it changed in place since they got it. Returns that identity."""
        if func is not None:
            if not callable(func):
                raise TypeError(f"func: expected a callable, got {func!r}")
            self._func = func
        identity = self._identify(self._func)
        self._pool.use(self._func, identity)
        return identity

    def _plan(self, parameters: Iterable[Any], path: PathLike | None,
              identity: Identity | None) -> _Plan:
        """Read (and, for a list or a checkpoint, validate) the rows; open the checkpoint
        and find the rows it already holds."""
        rows = iterate(parameters)
        held = self._func
        path = self.path if path is None else path
        name = function_name(held) if held is not None else "function"
        total = len(parameters) if isinstance(parameters, Sequence) else None
        if path is None and total is None:
            return _Plan(Rows(rows), None, None, name, identity)
        materialised = list(rows)
        calls = Calls.of(materialised)  # validates every row before any call starts
        if path is None:
            return _Plan(calls.source(), len(calls), None, name, identity)
        recorded = identity
        if held is None:  # actors handed in: ask them what they hold
            held = ray.get(self._pool.handle(0).get_func.remote())
            name = function_name(held) if held is not None else name
            recorded = self._identify(held) if held is not None else None
        store = Store.open(path, held, name, calls, materialised, recorded)
        del materialised
        todo: Sequence[int] | None = None
        if store.reused:  # the rows not known
            skip = bytearray(len(calls))
            for row in store.reused:
                skip[row] = 1
            todo = array("q", compress(range(len(calls)), map(operator.not_, skip)))
        source = calls.source(todo)
        return _Plan(source, len(source) + len(store.reused), store, name, identity)

    def aimap(
        self,
        parameters: Iterable[Any],
        func: Callable[..., Any] | None = None,
        *,
        ordered: bool = True,
        progress_bar: bool | None = None,
        path: PathLike | None = None,
        on_error: OnError = "raise",
    ) -> AsyncGenerator[Any, None]:
        """:meth:`imap` for asyncio: ``async for`` over the results, the event loop free
        while calls run. Cancelling the task iterating it (or closing it) stops the calls
        still running."""
        _check_call(ordered, progress_bar, path, on_error)
        if func is not None and not callable(func):
            raise TypeError(f"func: expected a callable, got {func!r}")
        iterate(parameters)  # a bad argument fails here, not at the first result
        show = self.progress_bar if progress_bar is None else progress_bar
        return self._aexecute(parameters, func, path, ordered, show, on_error)

    def _execute(self, plan: _Plan, ordered: bool, show: bool, on_error: OnError
                 ) -> Iterator[Any]:
        with ExitStack() as stack:
            stack.enter_context(self._pool.lease(self._func, plan.identity))
            state = self._open(plan, ordered, show, stack)
            records = stack.enter_context(closing(run(self._pool, state)))
            for values in _Merge(plan.known(), ordered, on_error, plan.name).all(records):
                yield from values

    async def _aexecute(self, parameters: Iterable[Any], func: Callable[..., Any] | None,
                        path: PathLike | None, ordered: bool, show: bool, on_error: OnError
                        ) -> AsyncGenerator[Any, None]:
        # On the loop's thread: Ray starts here if it must (Ray must be started by the thread
        # that uses it), and the lease is this thread's, so another function's sweep open on
        # this loop is a RuntimeError at once, as in one thread. Reading, digesting and
        # matching the rows runs in a worker thread.
        identity = self._hold(func)
        with ExitStack() as stack:
            stack.enter_context(self._pool.lease(self._func, identity))
            plan = await self._aplan(parameters, path, identity)
            state = self._open(plan, ordered, show, stack)
            async with aclosing(arun(self._pool, state)) as records:
                async for value in _Merge(plan.known(), ordered, on_error,
                                          plan.name).aall(records):
                    yield value

    async def _aplan(self, parameters: Iterable[Any], path: PathLike | None,
                     identity: Identity | None) -> _Plan:
        """:meth:`_plan` in a worker thread. Cancelled meanwhile, the thread still finishes:
        the checkpoint it opened is then closed."""
        held: Held = []  # its warnings, given here: on the thread whose frames are the user's
        task = asyncio.ensure_future(asyncio.to_thread(
            holding_warnings, held, self._plan, parameters, path, identity))
        try:
            plan = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_close_unused)
            raise
        for message, category in held:
            warn_user(message, category)
        return plan

    def _open(self, plan: _Plan, ordered: bool, show: bool, stack: ExitStack) -> Run:
        """Everything one run holds until it ends (entered on ``stack``), and the run. Its
        statistics become this Chunker's ``stats`` when it ends (runs at once on one
        Chunker each keep their own)."""
        if plan.store is not None:
            stack.callback(plan.store.close)
            if plan.store.peak_memory is not None:  # learned by an earlier process
                self._pool.learn_peak(plan.store.peak_memory)
        desc = plan.name + (f" [auto: {self.chunk_size} at once]" if self._pool.auto else "")
        progress = stack.enter_context(
            Progress(show, plan.total, initial=plan.reused, desc=desc))
        return Run(plan.source, ordered=ordered, batch_size=self._settings.batch_size,
                   progress=progress, store=plan.store, policy=self._policy, stats=RunStats(),
                   name=plan.name, on_end=self._ended)

    def _ended(self, stats: RunStats) -> None:
        self.stats = stats

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


class _Merge:
    """The one way reused rows and computed rows come together, and become what the user
    gets (results, or exceptions raised or returned: ``on_error``).

    Reused rows (``known``, ascending) need no call. Ordered, each is handed out just before
    the first computed row that follows it, and those before the first row to compute at
    once; unordered, all of them at once. ``run`` yields computed rows a part at a time, in
    ascending order when ordered. Reused results are read from the checkpoint as they are
    handed out (a few MB at a time), and every result is unpickled only as its part is
    handed out: a part of small results at once, in C (:func:`_decoded`), a larger one a
    result at a time.
    """

    def __init__(self, known: Iterator[tuple[list[int], list[bytes]]], ordered: bool,
                 on_error: OnError, name: str) -> None:
        self.known = known
        self.ordered = ordered
        self.one = functools.partial(_value, on_error=on_error, name=name)
        self.rows: list[int] = []  # the chunk of reused rows being handed out, from ``at``
        self.blobs: list[bytes] = []
        self.at = 0
        self.more = self.load()

    def load(self) -> bool:
        """Whether reused rows are left (the next chunk is read when this one is done)."""
        while self.at >= len(self.rows):
            chunk = next(self.known, None)
            if chunk is None:
                return False
            (self.rows, self.blobs), self.at = chunk, 0
        return True

    def decode(self, part: list[Outcome]) -> Iterable[Any]:
        """What the user gets for these computed rows."""
        done = _decoded(list(map(_VALUE, part))) if all(map(_OK, part)) else []
        return done if len(done) == len(part) else chain(done, map(self.one, part[len(done):]))

    def hand(self, end: int) -> Iterable[Any]:
        """What the user gets for the reused rows of this chunk up to ``end``."""
        at, self.at = self.at, end
        blobs = self.blobs[at:end]
        done = _decoded(blobs)
        if len(done) == len(blobs):
            return done
        at += len(done)
        count = end - at
        rest = zip(self.rows[at:end], repeat(True), blobs[len(done):], repeat(0.0, count),
                   repeat(0.0, count), repeat(""), repeat(None))
        return chain(done, map(self.one, rest))

    def all(self, records: Iterator[list[Outcome]]) -> Iterator[Iterable[Any]]:
        """Every row's value, reused and computed, in the order they are handed out, a part
        at a time."""
        if not self.more:  # nothing reused: the computed rows as they come
            yield from map(self.decode, records)
            return
        yield self.head()
        for part in records:
            yield self.push(part)
        yield self.upto(None)

    async def aall(self, records: AsyncIterator[list[Outcome]]) -> AsyncIterator[Any]:
        """:meth:`all` for asyncio, a value at a time. Reused rows cost only unpickling, so
        many in a row (before, between or after computed ones) would hold the loop: it gets a
        turn every :data:`_LOOP_TURN_EVERY` values."""
        count = 0
        async for values in self._parts(records):
            for value in values:
                yield value
                count += 1
                if count % _LOOP_TURN_EVERY == 0:
                    await asyncio.sleep(0)

    async def _parts(self, records: AsyncIterator[list[Outcome]]
                     ) -> AsyncIterator[Iterable[Any]]:
        yield self.head()
        async for part in records:
            yield self.push(part)
        yield self.upto(None)

    def upto(self, stop: int | None) -> Iterator[Any]:
        """The reused rows below ``stop`` (all that are left when None)."""
        while self.load():
            rows = self.rows
            end = len(rows) if stop is None else bisect_left(rows, stop, self.at)
            if end == self.at:
                return
            yield from self.hand(end)
            if end < len(rows):
                return

    def head(self) -> Iterator[Any]:
        """What can be handed out before any call finishes: ordered, the reused rows
        0, 1, 2, ... up to the first row to compute; unordered, every reused row."""
        if not self.ordered:
            yield from self.upto(None)
            return
        first = 0
        while self.load():
            rows, at = self.rows, self.at
            # rows ascend, so rows[at + k] == first + k holds for k below some m: find m
            low, high = 0, len(rows) - at
            while low < high:
                middle = (low + high + 1) // 2
                if rows[at + middle - 1] == first + middle - 1:
                    low = middle
                else:
                    high = middle - 1
            if low == 0:
                return
            yield from self.hand(at + low)
            first += low
            if self.at < len(rows):
                return

    def push(self, part: list[Outcome]) -> Iterable[Any]:
        """Computed rows arrived (ascending when ordered): what to hand out now, in order."""
        return self._ordered(part) if self.ordered else self.decode(part)

    def _ordered(self, part: list[Outcome]) -> Iterator[Any]:
        yield from self.upto(part[0][ROW])
        if not self.load() or self.rows[self.at] > part[-1][ROW]:  # none reused among them
            yield from self.decode(part)
            return
        for record in part:
            yield from self.upto(record[ROW])
            yield from self.decode([record])


_EAGER_BYTES = 256 << 10
"""A part of results pickled in at most this many bytes is unpickled at once (in C), against
a Python call per result; their objects (often a few times their pickles) are held until
the part is handed out."""


def _decoded(blobs: list[Any]) -> list[Any]:
    """The results pickled in band in ``blobs``, unpickled at once when they are small: all of
    them, or those before the first that fails (which is then unpickled on its own, to say
    which row it is); none when they are large or not all in band."""
    done: list[Any] = []
    if _BYTES.issuperset(map(type, blobs)) and sum(map(len, blobs)) <= _EAGER_BYTES:
        with contextlib.suppress(Exception):
            done.extend(map(pickle.loads, blobs))  # stops at a failure, keeping the rest
    return done


_VALUE, _OK = operator.itemgetter(VALUE), operator.itemgetter(OK)
"""An :data:`Outcome`'s value and whether it succeeded (in C)."""
_BYTES = frozenset({bytes})


_LOOP_TURN_EVERY = 16
"""An async sweep lets the event loop run after handing out this many values."""


def _close_unused(task: asyncio.Future[_Plan]) -> None:
    """A plan made for a sweep cancelled meanwhile: close the checkpoint it opened."""
    if not task.cancelled() and task.exception() is None:
        store = task.result().store
        if store is not None:
            store.close()


def _value(outcome: Outcome, on_error: OnError, name: str) -> Any:
    """What the user gets for one row: its result, unpickled now; or its exception, raised
    or returned."""
    if outcome[OK]:
        try:
            value = outcome[VALUE]
            return pickle.loads(value) if type(value) is bytes else unpack(value)
        except Exception as exc:
            error: BaseException = ResultError(
                f"row {outcome[ROW]} of {name}: its result could not be unpickled here: "
                f"{type(exc).__name__}: {exc}")
    else:
        error = outcome[VALUE]
    if on_error == "raise":
        raise error
    return error


def _check_call(ordered: object, progress_bar: object, path: object, on_error: object
                ) -> None:
    """The per-call arguments of a sweep, checked before anything runs."""
    check_bool("ordered", ordered)
    check_bool("progress_bar", progress_bar, allow_none=True)
    check_path(path)
    check_on_error(on_error)


def pool_for(settings: Options, actors: Sequence[ActorHandle[Any]] | None = None) -> Pool:
    """The actor pool these options describe (the user's ``actors``, when given)."""
    return Pool(settings.chunk_size or config.default_chunk_size, actor_cls=settings.actor_cls,
                actor_options=settings.actor_options, actors=actors,
                memory_per_call=settings.memory_per_call)


def chunk(
    func: Callable[..., Any] | None,
    parameters: Iterable[Any],
    actors: Sequence[ActorHandle[Any]] | None = None,
    chunk_size: ChunkSize | None = None,
    progress_bar: bool | None = None,
    path: PathLike | None = None,
    *,
    on_error: OnError = "raise",
    **options: Unpack[RunOptions],
) -> list[Any]:
    """Call ``func`` once per row of ``parameters``, at most ``chunk_size`` calls at once.

    ``output[i]`` is the result of row ``i``. Rows are lists or tuples (positional arguments)
    or dicts (keyword arguments). With ``actors`` (and ``func=None``) the function they hold
    is run; with both, ``func`` is stored in them first. Ray is started with
    ``config.ray_config`` if it is not running, and shut down afterwards only in that case.
    The keyword options are those of :func:`chunked`.

    Example::

        squares = chunk(pow, [[1, 2], [2, 2], [3, 2]], chunk_size=2)  # [1, 4, 9]

    Raises:
        ValueError: ``func`` and ``actors`` both None; ``chunk_size`` is not a positive int or
            'auto', or disagrees with ``len(actors)``.
        TypeError: ``parameters`` is not an iterable of rows, or a row is not a list, tuple
            or dict (the message names the row); an unknown option; ``actors`` holds
            something that is not a Ray actor handle (named by its index); ``path`` is not a
            str or os.PathLike; ``progress_bar`` is not a bool.
    """
    if func is None and actors is None:
        raise ValueError("`func` and `actors` cannot both be None.")
    if func is not None and not callable(func):
        raise TypeError(f"func: expected a callable, got {func!r}")
    _check_call(True, progress_bar, path, on_error)  # errors before Ray starts
    if actors is not None:
        actors = check_actors(actors)
    settings = Options.of("chunk", chunk_size, progress_bar, options)
    iterate(parameters)
    with ray_session():
        if actors is None:
            if not callable(func):
                raise TypeError(f"func: expected a callable, got {func!r}")
            # the map identifies the function and sends it (once: not also when made)
            with Chunker._lazy(func, pool_for(settings), settings) as chunker:
                chunker.path = path
                return chunker(parameters, on_error=on_error)
        chunker = Chunker(None, actors, chunk_size, progress_bar, True, path, **options)
        return chunker(parameters, func, on_error=on_error)
