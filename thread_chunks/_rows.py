"""Turning the user's ``parameters`` into calls, one validated row at a time."""

from __future__ import annotations

import reprlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ._actor import Item
from ._types import Args, Kwargs

_EXPECTED = "a list or tuple of positional arguments, or a dict of keyword arguments"


def describe(value: object, limit: int = 80) -> str:
    """A short ``type: repr`` of a value for error messages."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"


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
    raise TypeError(f"parameters row {index}: expected {_EXPECTED}, got {describe(row)}")


def items(rows: Iterable[Any], start: int = 0) -> Iterator[Item]:
    """Number and validate rows lazily: a bad row fails when it is reached."""
    for index, row in enumerate(rows, start):
        args, kwargs = normalise(row, index)
        yield Item(index, args, kwargs)


_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = 6
_short.maxtuple = 6
_short.maxdict = 6


def annotate(exc: BaseException, item: Item, name: str, remote_tb: str) -> None:
    """Name the failing row and its arguments on the exception (PEP 678 notes)."""
    index, args, kwargs = item
    parts = [_short.repr(a) for a in args] + [f"{k}={_short.repr(v)}" for k, v in kwargs.items()]
    note = f"thread-chunks: raised by row {index}: {name}({', '.join(parts)})"
    if remote_tb:
        note += "\nremote traceback:\n" + remote_tb.rstrip()
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10: keep the note where 3.11 would
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]
