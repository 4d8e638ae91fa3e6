"""The 1.0.5 view: :class:`Checkpoint`, the latest run as lists (``Checkpoint.load(path)``),
and a checkpoint written by hand (``Checkpoint(...)`` with a path, or :meth:`Checkpoint.save`):
its rows keyed by position under an identity of kind "by hand", until the first run of a
function of that name adopts them (:func:`~.runlist._adopt`).

Results are pickled: load checkpoints only from a trusted source.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from typing import TYPE_CHECKING, Any

from .._actor import pack
from .._digest import SCHEME, position_key
from .._errors import CheckpointError
from .connect import _open_for_writing, _reading_format, _wait_for_close
from .identity import _BY_HAND, _new_identity
from .runlist import _write_run
from .schema import (
    _IDENTITIES,
    _RESULTS,
    FORMAT_VERSION,
    _renew_staged,
    _transaction,
    _unpickle,
)

if TYPE_CHECKING:
    import pandas as pd

def _reset(conn: sqlite3.Connection, func_name: str) -> int:
    """Forget everything (inside a transaction): the file now holds what ``Checkpoint(...)``
    writes, under a fresh identity of kind "by hand" (its id returned). Only a save by hand
    does this; a run never deletes results."""
    for table in ("results", "identities"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(_RESULTS)
    conn.execute(_IDENTITIES)
    _renew_staged(conn)
    conn.execute("DELETE FROM run")
    conn.execute("DELETE FROM meta")
    hand = _new_identity(conn, _BY_HAND, func_name, ())
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("format_version", FORMAT_VERSION), ("scheme", SCHEME), ("func_name", func_name),
        ("identity", hand), ("by_hand", 1), ("created", time.time())])
    return hand


def _hand_keys(count: int) -> list[bytes]:
    """The keys of rows written by ``Checkpoint(...)``: by position, until a run adopts them."""
    return [position_key(b"by hand", i) for i in range(count)]


class Checkpoint:
    """The state of a run as thread-chunks 1.0.5 described it.

    ``Checkpoint.load(path)`` reads a checkpoint: the latest run's list. ``Checkpoint(...)``
    with a ``path`` writes one. ``output[i]`` is the result of row ``i`` (None where not done)
    and ``completed[i]`` says whether it is done; ``index`` and ``done`` are what was saved by
    ``Checkpoint(...)`` (1.0.5 stores them as given) until a run records into the file, then
    they are computed (``done``: rows completed; ``index``: one past the last completed row).
    Beyond 1.0.5: ``failed`` (the exception of a row whose last try raised),
    ``started``/``ended`` (epoch seconds, None where not done), ``actor`` (which actor ran it),
    ``stored`` (successful results in the file, for any list), ``reused`` (rows of the latest
    run that were already known) and ``signature`` (the parameters of the latest run's
    function); :meth:`to_pandas` makes a table of it all.
    """

    func_name: str
    parameters: list[Any]
    output: list[Any]
    completed: list[bool]
    index: int
    done: int
    path: str | None

    def __init__(self, func_name: str, parameters: list[Any], output: list[Any],
                 completed: list[bool], index: int, done: int,
                 path: str | os.PathLike[str] | None = None) -> None:
        self.func_name = func_name
        self.parameters = parameters
        self.output = output
        self.completed = completed
        self.index = index
        self.done = done
        self.path = None if path is None else os.fspath(path)
        n = len(parameters)
        self.failed: list[BaseException | None] = [None] * n
        self.started: list[float | None] = [None] * n
        self.ended: list[float | None] = [None] * n
        self.actor: list[str | None] = [None] * n
        self.memory: list[int | None] = [None] * n
        self.stored = 0
        self.reused = 0
        self.run_started: float | None = None
        self.signature: list[tuple[str, int, bool, Any]] | None = None
        """The parameters of the latest run's function (name, kind, has a default, default),
        as the run stored them; None when not known (a file written by hand)."""
        if self.path is not None:
            self.save()

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write this checkpoint (to ``path`` or to ``self.path``), replacing only our own file
        and everything in it. A run of a function named ``func_name`` reuses its completed rows
        (matched by their arguments, once the run knows the function's signature)."""
        target = os.fspath(path) if path is not None else self.path
        if target is None:
            raise ValueError("path: no path given and this Checkpoint has none")
        if not (len(self.output) == len(self.completed) == len(self.parameters)):
            raise ValueError("parameters, output and completed must have the same length")
        _wait_for_close(target)
        keys = _hand_keys(len(self.parameters))
        conn, lock, _ = _open_for_writing(target, len(self.parameters))
        try:
            with closing(conn), _transaction(conn):
                hand = _reset(conn, self.func_name)
                _write_run(conn, self.parameters, b"".join(keys), (), light=False)
                conn.executemany("INSERT INTO meta VALUES (?, ?)",
                                 [("index", int(self.index)), ("done", int(self.done))])
                now = time.time()
                conn.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                    (keys[i], 1, pack(self.output[i]), self.started[i], self.ended[i],
                     self.actor[i], now, self.memory[i], hand)
                    for i, done in enumerate(self.completed) if done])
                conn.executemany("UPDATE run SET ok = 1 WHERE row = ?",
                                 [(i,) for i, done in enumerate(self.completed) if done])
        except sqlite3.Error as exc:
            raise CheckpointError(f"cannot write checkpoint {target!r}: {exc}") from exc
        finally:
            lock.release()
        self.path = target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Checkpoint:
        """Read the checkpoint at ``path`` (CheckpointError when it is missing or not ours, or
        when a row's result cannot be unpickled here: the error names the row).

        This view holds every result of the latest run at once (its API is lists); what
        thread-chunks reads itself (resume, ``inspect``) never loads them all.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {path!r}")
        with _reading_format(path) as (conn, meta, fmt):
            blob = conn.execute("SELECT value FROM meta WHERE key = 'parameters'").fetchone()[0]
            try:
                parameters = list(_unpickle(blob))
            except Exception as exc:  # a class or module they use is gone here
                raise CheckpointError(
                    f"checkpoint {os.fspath(path)!r}: the parameters cannot be unpickled here "
                    f"({type(exc).__name__}: {exc}); import what defined them, or run where "
                    "it is importable") from exc
            found = conn.execute(
                f"SELECT r.row, s.ok, s.value, s.started, s.ended, s.actor, {fmt.memory} "
                f"FROM run AS r JOIN results AS s ON s.key = r.key AND {fmt.latest} "
                "ORDER BY r.row").fetchall()
            stored = conn.execute(f"SELECT count(*) FROM results AS s WHERE ok = 1 AND "
                                  f"{fmt.latest}").fetchone()[0]
        n = len(parameters)
        output: list[Any] = [None] * n
        completed = [False] * n
        view = cls(str(meta["func_name"]), parameters, output, completed, 0, 0)
        for i, ok, blob, started, ended, actor, memory in found:
            try:
                value = _unpickle(blob)
            except Exception as exc:  # its class or module is gone here
                raise CheckpointError(
                    f"checkpoint {os.fspath(path)!r}: the {'result' if ok else 'exception'} of "
                    f"row {i} cannot be unpickled here ({type(exc).__name__}: {exc}); import "
                    "what defined it, or run where it is importable") from exc
            view.started[i], view.ended[i], view.actor[i] = started, ended, actor
            view.memory[i] = memory
            if ok:
                output[i], completed[i] = value, True
            else:
                view.failed[i] = value
        view.done = int(meta["done"]) if "done" in meta else sum(completed)
        view.index = int(meta["index"]) if "index" in meta else max(
            (i + 1 for i, c in enumerate(completed) if c), default=0)
        view.stored = int(stored)
        view.reused = int(meta.get("reused", 0))
        view.run_started = meta.get("run_started")
        signature = meta.get("signature")
        view.signature = None if signature is None else list(_unpickle(signature))
        view.path = os.fspath(path)
        return view

    def to_pandas(self, func: Callable[..., Any] | None = None) -> pd.DataFrame:
        """The latest run as a table (a ``pandas.DataFrame``, one row per row, indexed by
        row number; pandas is an optional extra: ``pip install 'thread-chunks[table]'``).

        Columns: one per parameter by name, each row bound to the function's signature with
        defaults applied (stored by the run; ``func`` binds to its signature instead; rows of
        a file without one: ``arg0``, ``arg1``, ... and keywords by name); ``result`` (a dict
        result, when every result is one, spread into ``result.<key>`` columns); then
        ``status`` (done, failed, not run), ``error`` (a failure's type and first line),
        ``started`` and ``ended`` (UTC), ``seconds``, ``memory`` (the call's measured peak,
        bytes) and ``actor``. A parameter named like one of these keeps its name, and that
        column reads ``run.<name>``. Large arguments the file did not keep stay
        :class:`NotStored` descriptions.
        """
        from .._table import to_pandas

        return to_pandas(self, func)
