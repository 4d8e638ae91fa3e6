"""Crash-safe, row-keyed checkpoints: one SQLite row per finished call, keyed by what the
call was, not where it stood in the list.

The file is an SQLite database in WAL mode, marked as ours by ``PRAGMA application_id``:

- ``results(key, ok, value, started, ended, actor, recorded)``: one row per distinct call ever
  finished with this function. ``key`` is the row's identity (16 bytes, see ``_digest``).
- ``meta``: the format, the digest scheme, the function (name and body digest) the results
  belong to, and the latest run: its parameter list (pickled once), its keys (16 bytes per row,
  concatenated), how many rows it reused. ``index``/``done`` only while the file is as
  ``Checkpoint.save`` wrote it (1.0.5 stores them as given).

A run opens the file, computes every row's key, reuses each row whose key is recorded as a
success and sends only the others. Each batch of results is one small transaction (O(1) work per
result), so a kill -9 at any instant leaves a consistent file that lost at most the calls that
were in flight. Results are pickled: load checkpoints only from a trusted source.
"""

from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from typing import Any

import cloudpickle

from ._actor import Item, Outcome
from ._digest import KEY_BYTES, SCHEME, Binder, function_digest, position_key, row_keys
from ._errors import CheckpointError, CheckpointFailedWarning, CheckpointRestartWarning
from ._rows import TypedRow

APPLICATION_ID = 0x54434B31  # "TCK1"
FORMAT_VERSION = 3
BUSY_TIMEOUT_MS = 10_000
"""How long a save waits for a lock held by another process before it counts as failed."""

log = logging.getLogger("thread_chunks")

_RESULTS = """
CREATE TABLE IF NOT EXISTS results (
    key BLOB PRIMARY KEY,
    ok INTEGER NOT NULL,
    value BLOB,
    started REAL,
    ended REAL,
    actor TEXT,
    recorded REAL NOT NULL
);
"""
_SCHEMA = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;" + _RESULTS


def _pickle(value: object) -> bytes:
    """The standard pickler (fast, C) first; cloudpickle for what it cannot do (lambdas,
    local classes)."""
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        return cloudpickle.dumps(value, protocol=5)


def _unpickle(blob: bytes | None) -> Any:
    return None if blob is None else pickle.loads(blob)


# -- opening a file --------------------------------------------------------------------------


def _is_ours(path: str) -> bool:
    """True for our checkpoint, False for a missing or empty file; CheckpointError otherwise.

    Reads only: a file that is not ours is never written to.
    """
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return False
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint path {path!r} exists and is not a regular file")
    try:
        with open(path, "rb") as handle:
            header = handle.read(16)
        if header != b"SQLite format 3\x00":
            raise CheckpointError(
                f"{path!r} is not a thread-chunks checkpoint (not an SQLite file); "
                "refusing to touch it: choose another path or remove it yourself")
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise CheckpointError(
            f"{path!r} is not a readable thread-chunks checkpoint: {exc}") from exc
    if app_id != APPLICATION_ID:
        raise CheckpointError(
            f"{path!r} is an SQLite database of another program, not a thread-chunks "
            "checkpoint; refusing to touch it: choose another path or remove it yourself")
    return True


def _connect(path: str, create: bool) -> sqlite3.Connection:
    try:
        if create:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
            os.chmod(path, 0o600)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
        conn.execute("BEGIN IMMEDIATE")  # proves we can write, before any call starts
        if create:
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute("COMMIT")
        conn.executescript(_SCHEMA)
    except (OSError, sqlite3.Error) as exc:
        raise CheckpointError(f"cannot write checkpoint {path!r}: {exc}") from exc
    return conn


class _transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _meta(conn: sqlite3.Connection, *keys: str) -> dict[str, Any]:
    marks = ", ".join("?" * len(keys))
    return dict(conn.execute(f"SELECT key, value FROM meta WHERE key IN ({marks})", keys))


_FUNCTION_META = ("format_version", "scheme", "func_name", "func_digest", "by_hand")


def _reset(conn: sqlite3.Connection, func_name: str, func_digest: str, by_hand: bool) -> None:
    """Forget everything: the file now belongs to this function (inside a transaction)."""
    conn.execute("DROP TABLE IF EXISTS results")
    conn.execute(_RESULTS)
    conn.execute("DELETE FROM meta")
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("format_version", FORMAT_VERSION), ("scheme", SCHEME), ("func_name", func_name),
        ("func_digest", func_digest), ("by_hand", int(by_hand)), ("created", time.time())])


def _split(blob: bytes) -> list[bytes]:
    return [blob[i:i + KEY_BYTES] for i in range(0, len(blob), KEY_BYTES)]


def _unpicklable(row: int, value: object) -> str:
    return f"<row {row}: not recorded, {type(value).__name__} cannot be pickled>"


def _pickle_rows(rows: Sequence[Any], undigestable: Sequence[int]) -> bytes:
    """The parameter list, pickled once. Rows that cannot be pickled (and undigestable rows,
    which may hold Ray references) are replaced by a description."""
    listed = list(rows)
    for i in undigestable:
        listed[i] = _unpicklable(i, listed[i])
    try:
        return _pickle(listed)
    except Exception:
        kept: list[Any] = []
        for i, row in enumerate(listed):
            try:
                _pickle(row)
                kept.append(row)
            except Exception:
                kept.append(_unpicklable(i, row))
        return _pickle(kept)


def _write_run(conn: sqlite3.Connection, rows: Sequence[Any], keys: Sequence[bytes],
               undigestable: Sequence[int], reused: int) -> None:
    """Record the latest run's list (inside a transaction); the 1.0.5 index/done go."""
    conn.execute("DELETE FROM meta WHERE key IN ('index', 'done')")
    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
        ("parameters", _pickle_rows(rows, undigestable)), ("keys", b"".join(keys)),
        ("count", len(keys)), ("reused", reused), ("run_started", time.time())])


def _known(conn: sqlite3.Connection, keys: Sequence[bytes]) -> dict[int, bytes]:
    """Row -> pickled result, for every row whose key is recorded as a success.

    When the file holds not many more results than the list has rows, one scan of the table
    is cheapest; otherwise the list's keys go into a temporary table joined with it (the work
    follows the list, not the file).
    """
    stored = conn.execute("SELECT count(*) FROM results").fetchone()[0]
    if stored <= 4 * len(keys):
        get = dict(conn.execute("SELECT key, value FROM results WHERE ok = 1")).get
        return {row: blob for row, key in enumerate(keys) if (blob := get(key)) is not None}
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (row INTEGER PRIMARY KEY, key BLOB)")
    try:
        conn.executemany("INSERT INTO temp.wanted VALUES (?, ?)", enumerate(keys))
        return dict(conn.execute(
            "SELECT w.row, r.value FROM temp.wanted AS w JOIN results AS r ON r.key = w.key "
            "WHERE r.ok = 1 ORDER BY w.row"))
    finally:
        conn.execute("DELETE FROM temp.wanted")


def _adopt(conn: sqlite3.Connection, binder: Binder) -> None:
    """Re-key the rows of a checkpoint written by ``Checkpoint(...)`` (which knew no
    signature) to this function's row identity (inside a transaction)."""
    meta = _meta(conn, "parameters", "keys")
    if "parameters" not in meta or "keys" not in meta:
        return
    parameters = list(_unpickle(meta["parameters"]))
    old = _split(meta["keys"])
    rows = [normalised for normalised in map(_as_call, parameters)]
    new, _ = row_keys(binder, rows)
    conn.executemany("UPDATE OR REPLACE results SET key = ? WHERE key = ?",
                     [(n, o) for n, o in zip(new, old, strict=True) if n != o])
    conn.execute("UPDATE meta SET value = 0 WHERE key = 'by_hand'")


def _as_call(row: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(row, TypedRow):
        return row.args, row.kwargs
    if isinstance(row, dict):
        return (), dict(row)
    if isinstance(row, (list, tuple)):
        return tuple(row), {}
    return (row,), {}  # not a valid row: keyed as given, never matches a real call


def _hand_keys(count: int) -> list[bytes]:
    """The keys of rows written by ``Checkpoint(...)``: by position, until a run adopts them."""
    return [position_key(b"by hand", i) for i in range(count)]


class Store:
    """An open checkpoint for one run: records results as they arrive, by row identity."""

    def __init__(self, path: str, conn: sqlite3.Connection, keys: list[bytes]) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._keys = keys
        self._warned = False

    @classmethod
    def open(cls, path: str | os.PathLike[str], func: Callable[..., Any] | None, name: str,
             items: Sequence[Item], rows: Sequence[Any]) -> tuple[Store, dict[int, bytes]]:
        """Open or create the checkpoint at ``path`` for a run of ``func`` over ``items``
        (``rows`` are the same, as the user gave them: the 1.0.5 view shows them).

        Returns the store and the rows already known: row -> pickled result (see
        :func:`load_result`). A checkpoint of another function, or whose function's body
        changed, is emptied first, with a :class:`CheckpointRestartWarning` saying why.
        """
        path = os.fspath(path)
        ours = _is_ours(path)
        func_name = getattr(func, "__name__", name) if func is not None else name
        func_digest = function_digest(func) if func is not None else ""
        binder = Binder(func)
        keys, undigestable = row_keys(binder, [(item.args, item.kwargs) for item in items])
        conn = _connect(path, create=not ours)
        store = cls(path, conn, keys)
        try:
            with _transaction(conn):
                old = _meta(conn, *_FUNCTION_META)
                reason = _mismatch(old, func_name, func_digest)
                if reason is not None:
                    if reason:
                        warnings.warn(
                            f"checkpoint {path!r} holds results of another function "
                            f"({reason}); starting afresh and replacing them",
                            CheckpointRestartWarning, stacklevel=4)
                    _reset(conn, func_name, func_digest, by_hand=False)
                else:
                    if old.get("by_hand"):
                        _adopt(conn, binder)
                    if func_digest and not old.get("func_digest"):
                        conn.execute("UPDATE meta SET value = ? WHERE key = 'func_digest'",
                                     (func_digest,))
                known = _known(conn, keys)
                _write_run(conn, rows, keys, undigestable, len(known))
                stored = conn.execute("SELECT count(*) FROM results WHERE ok = 1").fetchone()[0]
        except BaseException:
            store.close()
            raise
        log.info("checkpoint %s: reused %d of %d rows (%d results stored)", path, len(known),
                 len(keys), stored)
        if undigestable:
            log.info("checkpoint %s: %d rows hold arguments that cannot be digested (first: "
                     "row %d); they are recorded by position, reused only for the same list",
                     path, len(undigestable), undigestable[0])
        return store, known

    def record(self, records: list[Outcome], actor: str) -> None:
        """Save finished calls in one transaction. A failure warns once and stops saving."""
        if self._conn is None:
            return
        keys = self._keys
        try:
            now = time.time()
            try:  # the fast path: the C pickler on every value at once
                dumps = pickle.dumps
                rows = [(keys[r.row], int(r.ok), dumps(r.value, 5), r.started, r.ended, actor,
                         now) for r in records]
            except Exception:
                rows = [(keys[r.row], int(r.ok), _pickle(r.value), r.started, r.ended, actor,
                         now) for r in records]
            with _transaction(self._conn):
                self._conn.executemany(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except Exception as exc:
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"saving to checkpoint {self.path!r} failed ({type(exc).__name__}: {exc}); "
                "the computation goes on and returns its results, but it is no longer saved",
                CheckpointFailedWarning, stacklevel=2)
        self.close()

    def close(self) -> None:
        """Stop saving. Everything recorded is already committed; closing folds the WAL back
        into the file (a few ms of I/O), done in a background thread so results are not
        held up by it (the interpreter waits for it at exit)."""
        if self._conn is not None:
            threading.Thread(target=_close_quietly, args=(self._conn,),
                             name="thread-chunks checkpoint close").start()
            self._conn = None


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:
        pass


def _mismatch(old: dict[str, Any], func_name: str, func_digest: str) -> str | None:
    """None when the results in the file belong to this function; else why not ("" for a
    new, empty file: nothing to warn about)."""
    if "func_name" not in old:
        return ""
    if old.get("format_version") != FORMAT_VERSION or old.get("scheme") != SCHEME:
        return "written by another version of thread-chunks"
    if old["func_name"] != func_name:
        return f"the function changed from {old['func_name']!r} to {func_name!r}"
    digest = old.get("func_digest") or ""
    if digest and func_digest and digest != func_digest:
        return f"the body of {func_name!r} changed"
    return None


def load_result(blob: bytes) -> Any:
    """A result as :meth:`Store.open` returned it, unpickled."""
    return pickle.loads(blob)


# -- the 1.0.5 view --------------------------------------------------------------------------


class Checkpoint:
    """The state of a run as thread-chunks 1.0.5 described it.

    ``Checkpoint.load(path)`` reads a checkpoint: the latest run's list. ``Checkpoint(...)``
    with a ``path`` writes one. ``output[i]`` is the result of row ``i`` (None where not done)
    and ``completed[i]`` says whether it is done; ``index`` and ``done`` are what was saved by
    ``Checkpoint(...)`` (1.0.5 stores them as given) until a run records into the file, then
    they are computed (``done``: rows completed; ``index``: one past the last completed row).
    Beyond 1.0.5: ``failed`` (the exception of a row whose last try raised),
    ``started``/``ended`` (epoch seconds, None where not done), ``actor`` (which actor ran it),
    ``stored`` (successful results in the file, for any list) and ``reused`` (rows of the latest
    run that were already known).
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
        self.stored = 0
        self.reused = 0
        self.run_started: float | None = None
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
        ours = _is_ours(target)
        keys = _hand_keys(len(self.parameters))
        with closing(_connect(target, create=not ours)) as conn, _transaction(conn):
            _reset(conn, self.func_name, "", by_hand=True)
            _write_run(conn, self.parameters, keys, (), 0)
            conn.executemany("INSERT INTO meta VALUES (?, ?)",
                             [("index", int(self.index)), ("done", int(self.done))])
            now = time.time()
            conn.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?)", [
                (keys[i], 1, _pickle(self.output[i]), self.started[i], self.ended[i],
                 self.actor[i], now) for i, done in enumerate(self.completed) if done])
        self.path = target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Checkpoint:
        """Read the checkpoint at ``path`` (CheckpointError when it is missing or not ours)."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise CheckpointError(f"no checkpoint at {path!r}")
        if not _is_ours(path):
            raise CheckpointError(f"{path!r} is empty, not a thread-chunks checkpoint")
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            if meta.get("format_version") != FORMAT_VERSION:
                raise CheckpointError(
                    f"checkpoint {path!r} was written by another version of thread-chunks "
                    f"(format {meta.get('format_version')}, this version reads "
                    f"{FORMAT_VERSION})")
            if "parameters" not in meta:
                raise CheckpointError(f"checkpoint {path!r} holds no run yet")
            keys = _split(meta["keys"])
            wanted = set(keys)
            results = {row[0]: row[1:] for row in conn.execute(
                "SELECT key, ok, value, started, ended, actor FROM results") if row[0] in wanted}
            stored = conn.execute("SELECT count(*) FROM results WHERE ok = 1").fetchone()[0]
        parameters = list(_unpickle(meta["parameters"]))
        n = len(parameters)
        output: list[Any] = [None] * n
        completed = [False] * n
        view = cls(str(meta["func_name"]), parameters, output, completed, 0, 0)
        for i, key in enumerate(keys):
            found = results.get(key)
            if found is None:
                continue
            ok, blob, started, ended, actor = found
            value = _unpickle(blob)
            view.started[i], view.ended[i], view.actor[i] = started, ended, actor
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
        view.path = path
        return view


def summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``thread-chunks inspect`` shows: progress, failures, reuse, timing, rate and ETA.

    The rate counts only calls that finished in the latest run (reused rows ran earlier).
    """
    view = Checkpoint.load(path)
    total = len(view.parameters)
    failed = sum(1 for i, e in enumerate(view.failed) if e is not None and not view.completed[i])
    starts = [t for t in view.started if t is not None]
    ends = [t for t in view.ended if t is not None]
    first, last = (min(starts), max(ends)) if starts and ends else (None, None)
    since = view.run_started or 0.0
    fresh = [(s, e) for s, e in zip(view.started, view.ended, strict=True)
             if s is not None and e is not None and e >= since]
    span = (max(e for _, e in fresh) - min(s for s, _ in fresh)) if fresh else 0.0
    rate = len(fresh) / span if span > 0 else None
    eta = (total - view.done) / rate if rate else (0.0 if view.done >= total else None)
    return {"path": view.path, "function": view.func_name, "done": view.done, "total": total,
            "failed": failed, "first_update": first, "last_update": last,
            "rate_per_second": rate, "eta_seconds": eta, "rows_stored": view.stored,
            "rows_latest_run": total, "reused_latest_run": view.reused}


def iter_timeline(view: Checkpoint) -> Iterator[tuple[str, float, float, int]]:
    """(actor, start, end, row) for every recorded call: the data of a timeline plot."""
    for i, (start, end, actor) in enumerate(zip(view.started, view.ended, view.actor,
                                                strict=True)):
        if start is not None and end is not None:
            yield actor or "?", start, end, i
