"""Turning the user's ``parameters`` into calls, one validated row at a time."""

from __future__ import annotations

import inspect
import reprlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any, Generic

from ._actor import Item
from ._types import Args, Kwargs, P

_EXPECTED = ("a list or tuple of positional arguments, a dict of keyword arguments, or a "
             "row made by f.row(...)")


def describe(value: object, limit: int = 80) -> str:
    """A short ``type: repr`` of a value for error messages."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"


class TypedRow(Generic[P]):
    """One row made by ``f.row(...)``: its arguments are checked against ``f``'s signature by
    type checkers (``P`` is that signature) and were bound to it when the row was made.

    It runs exactly as the equivalent plain row (a list of positional arguments or a dict of
    keyword arguments), and has the same identity in a checkpoint.
    """

    __slots__ = ("args", "kwargs")

    def __init__(self, args: Args, kwargs: Kwargs) -> None:
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"row({', '.join(parts)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TypedRow):
            return NotImplemented
        return (self.args, self.kwargs) == (other.args, other.kwargs)

    __hash__ = None  # type: ignore[assignment]  # arguments may be unhashable

    def __reduce__(self) -> tuple[Any, ...]:
        return (TypedRow, (self.args, self.kwargs))


class RowMaker:
    """Makes the typed rows of one function: binds each call to its signature at once, so a
    wrong call is a TypeError where the row is made, not on a worker minutes later.

    Positional rows within the arity of a plain signature (no ``*args``, ``**kwargs`` or
    keyword-only parameters) need only a length check; anything else is bound in full.
    """

    def __init__(self, func: Callable[..., Any], name: str) -> None:
        self.name = name
        try:
            self.signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):  # some builtins have none: nothing to check
            self.signature = None
            return
        params = list(self.signature.parameters.values())
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        plain = all(p.kind in positional for p in params)
        self.most = len(params) if plain else -1  # -1: every row is bound in full
        self.least = sum(1 for p in params if p.default is p.empty)

    def __call__(self, args: Args, kwargs: Kwargs) -> TypedRow[Any]:
        if self.signature is not None and (kwargs or not self.least <= len(args) <= self.most):
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{self.name}.row(...): {exc}") from None
        return TypedRow(args, kwargs)


def iterate(parameters: object) -> Iterator[Any]:
    """Check that ``parameters`` is an iterable of rows and return an iterator over it."""
    if isinstance(parameters, (str, bytes, bytearray, Mapping)) or not isinstance(
        parameters, Iterable
    ):
        raise TypeError(
            f"parameters: expected an iterable of rows (each {_EXPECTED}), "
            f"got {describe(parameters)}"
        )
    return iter(parameters)


def normalise(row: object, index: int) -> tuple[Args, Kwargs]:
    """The positional and keyword arguments of one row, or a TypeError naming it."""
    if isinstance(row, (list, tuple)):
        return tuple(row), {}
    if isinstance(row, Mapping):
        bad = [key for key in row if not isinstance(key, str)]
        if bad:
            raise TypeError(
                f"parameters row {index}: keyword names must be str, got {describe(bad[0])}"
            )
        return (), dict(row)
    if isinstance(row, TypedRow):
        return row.args, row.kwargs
    raise TypeError(f"parameters row {index}: expected {_EXPECTED}, got {describe(row)}")


_POSITIONAL = frozenset({list, tuple})


class Source(Iterator[Item]):
    """Where a run reads its rows from: :meth:`take` reads several at once."""

    def take(self, n: int) -> list[Item]:
        """The next ``n`` rows (fewer at the end)."""
        raise NotImplementedError

    def __next__(self) -> Item:
        taken = self.take(1)
        if not taken:
            raise StopIteration
        return taken[0]


class Rows(Source):
    """The user's rows, read lazily (a bad row fails when it is reached), numbered and
    validated."""

    def __init__(self, rows: Iterable[Any], start: int = 0) -> None:
        self._rows = iter(rows)
        self._next = start

    def take(self, n: int) -> list[Item]:
        """The next ``n`` rows (fewer at the end), reading no more from the input."""
        calls = Calls.of(list(islice(self._rows, n)), self._next)
        first = self._next
        self._next += len(calls)
        return list(zip(range(first, self._next), calls.args, calls.kwargs, strict=True))


class Calls(Collection[tuple[Args, "Kwargs | None"]]):
    """A list of rows, validated at once, as the arguments of each call (``(args,
    kwargs)``, row by row): two flat lists, not an object per row. A run of a long list holds
    these while it runs, and the garbage collector's full passes visit every object held, so
    the rows become :data:`Item` tuples only as they are taken (:meth:`source`)."""

    def __init__(self, args: list[Args], kwargs: list[Kwargs | None]) -> None:
        self.args = args
        self.kwargs = kwargs

    @classmethod
    def of(cls, rows: list[Any], start: int = 0) -> Calls:
        """The calls of ``rows``, the first being row ``start`` (a TypeError names the first
        bad row). Rows that are all lists or tuples, the common case, cost no Python per row."""
        if _POSITIONAL.issuperset(map(type, rows)):
            return cls(list(map(tuple, rows)), [None] * len(rows))
        args: list[Args] = []
        kwargs: list[Kwargs | None] = []
        for index, row in enumerate(rows, start):
            a, k = normalise(row, index)
            args.append(a)
            kwargs.append(k or None)
        return cls(args, kwargs)

    def __len__(self) -> int:
        return len(self.args)

    def __iter__(self) -> Iterator[tuple[Args, Kwargs | None]]:
        return zip(self.args, self.kwargs, strict=True)

    def __contains__(self, call: object) -> bool:
        return any(pair == call for pair in self)

    def source(self, rows: Sequence[int] | None = None) -> Listed:
        """The rows to run (``rows``, ascending; all when None), numbered as they are."""
        return Listed(self, rows)


class Listed(Source):
    """Rows of :class:`Calls` to run, made into items as they are taken."""

    def __init__(self, calls: Calls, rows: Sequence[int] | None) -> None:
        self._calls = calls
        self._rows = rows
        self._at = 0

    def __len__(self) -> int:
        return len(self._calls) if self._rows is None else len(self._rows)

    def take(self, n: int) -> list[Item]:
        at, args, kwargs = self._at, self._calls.args, self._calls.kwargs
        if self._rows is None:
            end = min(at + n, len(args))
            self._at = end
            return list(zip(range(at, end), args[at:end], kwargs[at:end], strict=True))
        rows = self._rows[at:at + n]
        self._at = at + len(rows)
        return list(zip(rows, map(args.__getitem__, rows), map(kwargs.__getitem__, rows),
                        strict=True))


_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = 6
_short.maxtuple = 6
_short.maxdict = 6


def annotate(exc: BaseException, item: Item, name: str, remote_tb: str) -> None:
    """Name the failing row and its arguments on the exception (PEP 678 notes)."""
    index, args, kwargs = item
    parts = [_short.repr(a) for a in args] + [f"{k}={_short.repr(v)}"
                                              for k, v in (kwargs or {}).items()]
    note = f"thread-chunks: raised by row {index}: {name}({', '.join(parts)})"
    if remote_tb:
        note += "\nremote traceback:\n" + remote_tb.rstrip()
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10: keep the note where 3.11 would
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]
