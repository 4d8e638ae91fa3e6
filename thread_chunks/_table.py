"""A checkpoint as a table, for analysis: :func:`to_pandas` (one row per row of the latest
run: its parameters by name, its result, its state, timing and memory), and :func:`row_states`
(each row's state for ``thread-chunks inspect --rows``, read in SQL: no result unpickled).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from ._checkpoint import Checkpoint, _as_call, _reading, _unpickle
from ._inflight import META_KEY, Running

if TYPE_CHECKING:
    import pandas as pd

INSTALL_HINT = "pip install 'thread-chunks[table]'"

RUN_COLUMNS = ("status", "error", "started", "ended", "seconds", "memory", "actor")
"""The columns :func:`to_pandas` adds after the parameters and the result. A parameter named
like one of them (or ``result``) keeps its name; the column here then reads ``run.<name>``."""

_KINDS = {int(kind): kind for kind in (
    inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.KEYWORD_ONLY,
    inspect.Parameter.VAR_KEYWORD)}


def _import_pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:
        raise ImportError(
            f"Checkpoint.to_pandas() needs pandas, which is not installed: {INSTALL_HINT}"
        ) from exc
    return pandas


def stored_signature(params: Sequence[tuple[str, int, bool, Any]] | None
                     ) -> inspect.Signature | None:
    """The signature a checkpoint stored for its run's function (see ``_signature_blob``)."""
    if params is None:
        return None
    try:
        return inspect.Signature([
            inspect.Parameter(name, _KINDS[kind],
                              default=default if has_default else inspect.Parameter.empty)
            for name, kind, has_default, default in params])
    except (KeyError, TypeError, ValueError):  # written by something else: bind nothing
        return None


def arguments(row: Any, signature: inspect.Signature | None) -> dict[str, Any]:
    """Row ``row``'s arguments by parameter name, defaults applied (``**kwargs`` spread into
    their names, ``*args`` kept as a tuple). Without a signature, or for a row that does not
    fit it: positional arguments as ``arg0``, ``arg1``, ... and keywords by their names."""
    args, kwargs = _as_call(row)
    if signature is not None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            pass
        else:
            bound.apply_defaults()
            named: dict[str, Any] = {}
            for name, value in bound.arguments.items():
                if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                    named.update(value)
                else:
                    named[name] = value
            return named
    given = {f"arg{i}": value for i, value in enumerate(args)}
    given.update(kwargs)
    return given


def first_line(error: BaseException) -> str:
    """``Type: the first line of its message`` (the type alone for an empty message)."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


def to_pandas(view: Checkpoint, func: Callable[..., Any] | None = None) -> pd.DataFrame:
    """The table of :meth:`Checkpoint.to_pandas`."""
    pandas = _import_pandas()
    try:
        signature = inspect.signature(func) if func is not None else None
    except (TypeError, ValueError):
        signature = None
    if func is None:
        signature = stored_signature(view.signature)
    n = len(view.parameters)
    rows = [arguments(row, signature) for row in view.parameters]
    names: dict[str, None] = dict.fromkeys(signature.parameters if signature else ())
    for bound in rows:
        names.update(dict.fromkeys(bound))
    for parameter in signature.parameters.values() if signature else ():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            names.pop(parameter.name, None)  # spread into its keys
    columns: dict[str, Any] = {name: [bound.get(name) for bound in rows] for name in names}

    done = [view.output[i] for i in range(n) if view.completed[i]]
    spread = bool(done) and all(
        isinstance(value, dict) and all(isinstance(key, str) for key in value)
        for value in done)
    if spread:
        keys: dict[str, None] = {}
        for value in done:
            keys.update(dict.fromkeys(value))
        for key in keys:
            columns[f"result.{key}"] = [
                view.output[i].get(key) if view.completed[i] else None for i in range(n)]
    else:
        columns[_free("result", columns)] = [
            view.output[i] if view.completed[i] else None for i in range(n)]

    failed = view.failed
    status = ["done" if view.completed[i] else "failed" if failed[i] is not None else "not run"
              for i in range(n)]
    started = pandas.to_datetime(pandas.Series(view.started, dtype="float64"), unit="s",
                                 utc=True)
    ended = pandas.to_datetime(pandas.Series(view.ended, dtype="float64"), unit="s", utc=True)
    seconds = [None if s is None or e is None else e - s
               for s, e in zip(view.started, view.ended, strict=True)]
    ours: dict[str, Any] = {
        "status": status,
        "error": [None if error is None else first_line(error) for error in failed],
        "started": started, "ended": ended,
        "seconds": pandas.array(seconds, dtype="Float64"),
        "memory": pandas.array(view.memory, dtype="Int64"),
        "actor": view.actor,
    }
    for name, values in ours.items():
        columns[_free(name, columns)] = values
    frame: pd.DataFrame = pandas.DataFrame(columns, index=pandas.RangeIndex(n, name="row"))
    return frame


def _free(name: str, taken: dict[str, Any]) -> str:
    """``name``, or ``run.<name>`` when a parameter has it."""
    return f"run.{name}" if name in taken else name


class RowState(NamedTuple):
    """One row of the latest run as ``inspect --rows`` lists it."""

    row: int
    state: str
    """done, failed, running (sent to an actor, not finished) or waiting."""
    reused: bool
    """Done by an earlier run (recorded before this run started)."""
    seconds: float | None
    actor: str | None
    error: str | None
    """A failure's type and the first line of its message."""


def row_states(path: str | os.PathLike[str]) -> Iterator[RowState]:
    """Every row of the latest run with its state, in row order. SQL over the row states and
    timing columns; only failures are unpickled (for their first line; few, and small)."""
    with _reading(path) as (conn, meta):
        since = meta.get("run_started")
        running = Running(meta.get(META_KEY))
        for row, state, ok, seconds, actor, recorded, failure in conn.execute(
                "SELECT r.row, r.ok, s.ok, s.ended - s.started, s.actor, s.recorded, "
                "CASE WHEN r.ok = 0 AND s.ok = 0 THEN s.value END "
                "FROM run AS r LEFT JOIN results AS s ON s.key = r.key ORDER BY r.row"):
            if running and row in running:  # sent (again) and not finished
                yield RowState(row, "running", False, None, None, None)
            elif state == 1 and ok == 1:
                reused = since is not None and recorded is not None and recorded < since
                yield RowState(row, "done", reused, seconds, actor, None)
            elif state == 0:
                yield RowState(row, "failed", False, seconds, actor, _error_of(failure))
            else:
                yield RowState(row, "waiting", False, None, None, None)


def _error_of(blob: bytes | None) -> str:
    if blob is None:
        return "(no error recorded)"
    try:
        error = _unpickle(blob)
    except Exception as exc:  # its class cannot be imported here
        return f"(the error cannot be read here: {first_line(exc)})"
    return first_line(error) if isinstance(error, BaseException) else repr(error)
