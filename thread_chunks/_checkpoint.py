"""Crash-safe checkpoints: one SQLite row per finished call.

The file is an SQLite database in WAL mode, marked as ours by ``PRAGMA application_id``. Each
batch of results is one small transaction (O(1) work per result, no rewrite of what is
already there), so a kill -9 at any instant leaves a consistent file that lost at most the
calls that were in flight. Results are pickled: load checkpoints only from a trusted source.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from types import CodeType
from typing import Any

import cloudpickle

from ._actor import Outcome
from ._errors import CheckpointError, CheckpointFailedWarning, CheckpointRestartWarning

APPLICATION_ID = 0x54434B31  # "TCK1"
FORMAT_VERSION = 2
BUSY_TIMEOUT_MS = 10_000
"""How long a save waits for a lock held by another process before it counts as failed."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (
    idx INTEGER PRIMARY KEY,
    ok INTEGER NOT NULL,
    value BLOB,
    started REAL,
    ended REAL,
    actor TEXT,
    recorded REAL NOT NULL
);
"""


# -- identity of a run -----------------------------------------------------------------------


def _feed_code(digest: Any, code: CodeType) -> None:
    digest.update(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        if isinstance(const, CodeType):
            _feed_code(digest, const)
        else:
            digest.update(repr(const).encode())


def body_digest(func: object) -> str:
    """A digest of the function's code (bytecode, names, constants), or "" when it has none.

    Moving a function within its file or editing a comment keeps it; changing what the
    function does changes it.
    """
    target = func
    while hasattr(target, "__wrapped__"):
        target = target.__wrapped__
    code = getattr(target, "__code__", None)
    if code is None:
        code = getattr(type(target).__call__, "__code__", None)  # a callable object
    if not isinstance(code, CodeType):
        return ""
    digest = hashlib.sha256()
    _feed_code(digest, code)
    return digest.hexdigest()


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


@dataclass(frozen=True)
class Identity:
    """What a checkpoint belongs to: resuming needs all of it to match."""

    func_name: str
    func_digest: str
    count: int
    params_digest: str

    def mismatch(self, old: Identity) -> str:
        """Why ``old`` cannot be resumed by this run ("" when it can)."""
        if old.func_name != self.func_name:
            return f"the function changed from {old.func_name!r} to {self.func_name!r}"
        if old.func_digest and self.func_digest and old.func_digest != self.func_digest:
            return f"the body of {self.func_name!r} changed"
        if old.count != self.count:
            return f"the parameters changed ({old.count} rows before, {self.count} now)"
        if old.params_digest != self.params_digest:
            return "the parameters changed (same count, different values or order)"
        return ""


def _read_identity(conn: sqlite3.Connection) -> Identity | None:
    meta = dict(conn.execute("SELECT key, value FROM meta WHERE key != 'parameters'").fetchall())
    if "func_name" not in meta or meta.get("format_version") != FORMAT_VERSION:
        return None  # empty, or from a format this version does not read
    return Identity(str(meta["func_name"]), str(meta.get("func_digest", "")),
                    int(meta["count"]), str(meta["params_digest"]))


def _write_fresh(conn: sqlite3.Connection, identity: Identity, blob: bytes) -> None:
    with _transaction(conn):
        conn.execute("DELETE FROM results")
        conn.execute("DELETE FROM meta")
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("format_version", FORMAT_VERSION),
            ("func_name", identity.func_name),
            ("func_digest", identity.func_digest),
            ("count", identity.count),
            ("params_digest", identity.params_digest),
            ("created", time.time()),
            ("parameters", blob),
        ])


class _transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _identity(func_name: str, func_digest: str, parameters: Sequence[Any]
              ) -> tuple[Identity, bytes]:
    """The run's identity and the pickled parameter list (stored once, as one value)."""
    blob = _pickle(list(parameters))
    return Identity(func_name, func_digest, len(parameters),
                    hashlib.sha256(blob).hexdigest()), blob


class Store:
    """An open checkpoint for one run: records results as they arrive."""

    def __init__(self, path: str, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._warned = False

    @classmethod
    def open(cls, path: str | os.PathLike[str], func_name: str, func_digest: str,
             parameters: Sequence[Any]) -> tuple[Store, dict[int, Any]]:
        """Open or create the checkpoint at ``path`` for this run.

        Returns the store and the results already recorded (index -> value). A checkpoint of
        another run is replaced, with a :class:`CheckpointRestartWarning` saying why.
        """
        path = os.fspath(path)
        ours = _is_ours(path)
        identity, blob = _identity(func_name, func_digest, parameters)
        conn = _connect(path, create=not ours)
        store = cls(path, conn)
        try:
            old = _read_identity(conn)
            reason = "" if old is None else identity.mismatch(old)
            if old is None or reason:
                if reason:
                    warnings.warn(
                        f"checkpoint {path!r} is from another run ({reason}); starting afresh "
                        "and replacing it", CheckpointRestartWarning, stacklevel=4)
                _write_fresh(conn, identity, blob)
                return store, {}
            done = {idx: _unpickle(blob) for idx, blob in
                    conn.execute("SELECT idx, value FROM results WHERE ok = 1")}
        except BaseException:
            store.close()
            raise
        return store, done

    def record(self, records: list[Outcome], actor: str) -> None:
        """Save finished calls in one transaction. A failure warns once and stops saving."""
        if self._conn is None:
            return
        try:
            now = time.time()
            try:  # the fast path: the C pickler on every value at once
                dumps = pickle.dumps
                rows = [(r.row, int(r.ok), dumps(r.value, 5), r.started, r.ended, actor, now)
                        for r in records]
            except Exception:
                rows = [(r.row, int(r.ok), _pickle(r.value), r.started, r.ended, actor,
                         now)
                        for r in records]
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


# -- the 1.0.5 view --------------------------------------------------------------------------


class Checkpoint:
    """The state of a run as thread-chunks 1.0.5 described it.

    ``Checkpoint.load(path)`` reads a checkpoint; ``Checkpoint(...)`` with a ``path`` writes
    one. ``output[i]`` is the result of row ``i`` (None where not done) and ``completed[i]``
    says whether it is done. Beyond 1.0.5: ``failed`` (the exception of a row whose last try
    raised), ``started``/``ended`` (epoch seconds, None where not done) and ``actor`` (which
    actor ran it).
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
        if self.path is not None:
            self.save()

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write this checkpoint (to ``path`` or to ``self.path``), replacing only our own file."""
        target = os.fspath(path) if path is not None else self.path
        if target is None:
            raise ValueError("path: no path given and this Checkpoint has none")
        if not (len(self.output) == len(self.completed) == len(self.parameters)):
            raise ValueError("parameters, output and completed must have the same length")
        ours = _is_ours(target)
        identity, blob = _identity(self.func_name, "", self.parameters)
        with closing(_connect(target, create=not ours)) as conn:
            _write_fresh(conn, identity, blob)
            now = time.time()
            rows = [(i, 1, _pickle(self.output[i]), self.started[i], self.ended[i],
                     self.actor[i], now) for i, done in enumerate(self.completed) if done]
            with _transaction(conn):
                conn.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
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
            identity = _read_identity(conn)
            if identity is None:
                raise CheckpointError(f"checkpoint {path!r} holds no run yet")
            parameters = list(_unpickle(conn.execute(
                "SELECT value FROM meta WHERE key = 'parameters'").fetchone()[0]))
            results = conn.execute(
                "SELECT idx, ok, value, started, ended, actor FROM results").fetchall()
        n = len(parameters)
        output: list[Any] = [None] * n
        completed = [False] * n
        view = cls(identity.func_name, parameters, output, completed, 0, 0)
        for idx, ok, blob, started, ended, actor in results:
            value = _unpickle(blob)
            view.started[idx], view.ended[idx], view.actor[idx] = started, ended, actor
            if ok:
                output[idx], completed[idx] = value, True
            else:
                view.failed[idx] = value
        view.done = sum(completed)
        view.index = max((i + 1 for i, c in enumerate(completed) if c), default=0)
        view.path = path
        return view


def summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``thread-chunks inspect`` shows: progress, failures, timing, rate and ETA."""
    view = Checkpoint.load(path)
    total = len(view.parameters)
    failed = sum(1 for i, e in enumerate(view.failed) if e is not None and not view.completed[i])
    starts = [t for t in view.started if t is not None]
    ends = [t for t in view.ended if t is not None]
    first, last = (min(starts), max(ends)) if starts and ends else (None, None)
    rate = view.done / (last - first) if first is not None and last and last > first else None
    eta = (total - view.done) / rate if rate else None
    return {"path": view.path, "function": view.func_name, "done": view.done, "total": total,
            "failed": failed, "first_update": first, "last_update": last,
            "rate_per_second": rate, "eta_seconds": eta}


def iter_timeline(view: Checkpoint) -> Iterator[tuple[str, float, float, int]]:
    """(actor, start, end, row) for every recorded call: the data of a timeline plot."""
    for i, (start, end, actor) in enumerate(zip(view.started, view.ended, view.actor,
                                                strict=True)):
        if start is not None and end is not None:
            yield actor or "?", start, end, i


