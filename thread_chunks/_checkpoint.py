"""Crash-safe, row-keyed checkpoints: one SQLite row per finished call, keyed by what the
call was, not where it stood in the list.

The file is an SQLite database in WAL mode, marked as ours by ``PRAGMA application_id``:

- ``identities``: what computed the results (:data:`_IDENTITIES`): one row per identity of
  a function (its code and all it reaches, ``actor_cls``, ``depends_on``: see
  :func:`~thread_chunks._digest.identify`) a run had. A run never deletes results: those of
  another identity are kept, and reused only by a run of that identity again.
- ``results(key, ok, value, started, ended, actor, recorded, memory, identity)``: one row per
  distinct call ever finished, per identity (unique ``(identity, key)``). ``key`` is the
  row's arguments' digest (16 bytes, see ``_digest``); ``value`` the pickled result (as the
  actor pickled it) or exception.
- ``staged``: the same columns, no index: results of small values recorded by the latest run,
  appended as they arrive, folded into ``results`` in that order (the latest of a key wins)
  when the run's store closes or, after a kill, when the next run opens the file. Readers see
  ``results`` and ``staged`` as one (:func:`_reading`).
- ``run(row, key, ok)``: the latest run's list, one key per row, and the row's state as the
  run knows it (1 done, 0 failed, NULL not yet), kept as results are recorded.
- ``meta``: the format, the digest scheme, and the latest run: its function's name and
  identity (``identity``, an id in ``identities``), its parameter list (pickled once, large
  arguments replaced by a :class:`NotStored` description), how many rows it reused.
  ``index``/``done`` only while the file is as ``Checkpoint.save`` wrote it (1.0.5 stores
  them as given).

A run opens the file, computes every row's key, and finds in SQL (``run`` joined with
``results`` of its identity) the rows recorded as a success; it sends only the others, and
reads the reused results back in row order, a few MB at a time, as they are handed out
(:meth:`Store.reused`). Each batch of results is one small transaction (O(1) work per result),
so a kill -9 at any instant leaves a consistent file that lost at most the calls that were in
flight. Small results go to ``staged`` rather than straight into ``results``: keys are digests,
so every result recorded into the key index lands on a random page of it, and once the index
outgrows a batch each commit rewrites a page per row (4 KB of write-ahead log a row, ~30 us at
200,000 rows); appended to ``staged`` a row costs its own bytes, and one fold per run writes
each page of the index once. The summary (``thread-chunks inspect``) is SQL over keys and
timing columns: it unpickles nothing. Results are pickled: load checkpoints only from a
trusted source.

Before SQLite touches the file, ``_files`` checks it is a regular file of ours (a new one is
made beside it and linked into place whole) and tells its filesystem; a run holds the writer
lock of ``_lock`` from open to close. On a network filesystem the file is written without the
WAL's shared memory (:func:`_connect`) and read only when no run holds it (:func:`_read_only`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import sqlite3
import struct
import threading
import time
from array import array
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _files, _signals
from ._actor import (
    ENDED,
    MEMORY,
    OK,
    ROW,
    STARTED,
    VALUE,
    Outcome,
    consecutive,
    in_band,
    pack,
    unpack,
    weight,
)
from ._digest import (
    KEY_BYTES,
    SCHEME,
    Binder,
    Identity,
    identify,
    list_key,
    position_key,
    row_keys,
)
from ._errors import (
    CheckpointError,
    CheckpointFailedWarning,
    CheckpointInUseError,
    CheckpointRestartWarning,
    warn_user,
)
from ._inflight import META_KEY as RUNNING_KEY
from ._inflight import InFlight, Running
from ._lock import WriterLock, holder
from ._rows import TypedRow
from ._wire import SHARE_AT_BYTES, is_large

if TYPE_CHECKING:
    import pandas as pd

APPLICATION_ID = 0x54434B31  # "TCK1"
FORMAT_VERSION = 7
"""7: results kept per identity (``identities``; ``results.identity``): a changed function
deletes nothing; 6: small results staged before they are folded into ``results``; 5: each
result's measured peak memory (``results.memory``); 4: the latest run's keys in the ``run``
table (3 kept them in one ``meta`` blob). Files of formats 3 to 6 are upgraded when a run
opens them (their results go under a *legacy* identity, never reused: their identity was
narrower), and read as they are."""
BUSY_TIMEOUT_MS = 10_000
"""How long a save waits for a lock held by another process before it counts as failed."""
MAX_RECORD_BYTES = 1_000_000_000
"""The largest pickled result recorded (SQLite's own limit on a value and a row, 1 GB by
default): a larger one is returned but not recorded, with a warning."""
_STAGE_MAX_BYTES = 4096
"""Results pickled to at most this many bytes are staged (appended, folded in later); a larger
one is written into ``results`` at once: its index entry costs little beside its bytes, and a
fold would copy them."""
_FOLD_CACHE_KIB = 64 << 10
"""SQLite's page cache while staged results are folded in (at most; the default is 2 MB):
the key index of ~2 million results."""
_REUSED_CHUNK_BYTES = 8 << 20
_REUSED_CHUNK_ROWS = 500
"""Reused results are read back this many bytes (or rows) at a time, at most (one larger
result is read alone)."""

log = logging.getLogger("thread_chunks")

_ROW, _OK, _VALUE, _STARTED, _ENDED, _MEMORY = map(itemgetter, (ROW, OK, VALUE, STARTED, ENDED,
                                                               MEMORY))
"""An :data:`Outcome`'s fields, read in C."""
_FIRST, _SECOND = _ROW, _OK
_BYTES = frozenset({bytes})

_RESULTS = """
CREATE TABLE IF NOT EXISTS results (
    key BLOB NOT NULL,
    ok INTEGER NOT NULL,
    value BLOB,
    started REAL,
    ended REAL,
    actor TEXT,
    recorded REAL NOT NULL,
    memory INTEGER,
    identity INTEGER NOT NULL,
    UNIQUE (identity, key)
);
"""
_RUN = ("CREATE TABLE IF NOT EXISTS run "
        "(row INTEGER PRIMARY KEY, key BLOB NOT NULL, ok INTEGER);")
_STAGED = "CREATE TABLE IF NOT EXISTS staged AS SELECT * FROM results WHERE 0;"
"""``results``' columns (whatever they are), without its key index."""
_IDENTITIES = """
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY,
    digest BLOB UNIQUE NOT NULL,
    func_name TEXT NOT NULL,
    parts TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_used REAL NOT NULL,
    kind TEXT NOT NULL
);
"""
"""What computed the results: one row per identity (the function and all it depends on, see
:func:`~thread_chunks._digest.identify`) a run of this file had. ``digest`` is the identity's
digest with the scheme (:func:`_stored_digest`); ``parts`` a JSON list of ``[what, hex]``
pairs (what the warning compares); ``kind`` one of :data:`_KINDS`."""
_IDENTIFIED, _LEGACY, _UNIDENTIFIABLE, _BY_HAND = "identified", "legacy", "unidentifiable", \
    "by hand"
_KINDS = (_IDENTIFIED, _LEGACY, _UNIDENTIFIABLE, _BY_HAND)
"""identified: reused when a run has the same identity; legacy: results of a file of format 3
to 6 (identified more narrowly: never reused); unidentifiable: a run whose function could not
be encoded (a fresh identity, never matched); by hand: written by ``Checkpoint(...)``, adopted
by the first run of a function of that name."""
_SCHEMA = ("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
           + _RESULTS + _STAGED + _RUN + _IDENTITIES)


def _unpickle(blob: bytes | None) -> Any:
    return None if blob is None else unpack(blob)


class NotStored:
    """Stands in ``Checkpoint.load(path).parameters`` for a large argument (an array or a
    buffer of 1 MiB or more) that the checkpoint did not copy: the row's identity is its
    digest, and ``description`` says what it was (type, shape, dtype, size)."""

    __slots__ = ("description",)

    def __init__(self, description: str) -> None:
        self.description = description

    def __repr__(self) -> str:
        return f"<not stored: {self.description}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NotStored) and other.description == self.description

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (NotStored, (self.description,))


def _not_stored(value: object) -> NotStored:
    kind = type(value)
    parts = [f"{kind.__module__}.{kind.__qualname__}".removeprefix("builtins.")]
    for attr in ("shape", "dtype"):
        shown = getattr(value, attr, None)
        if shown is not None:
            parts.append(f"{attr} {shown}")
    size = getattr(value, "nbytes", None)
    size = len(value) if size is None and isinstance(value, (bytes, bytearray)) else size
    parts.append(f"{size / 2**20:.1f} MiB" if isinstance(size, int) else "size unknown")
    return NotStored(", ".join(parts))


def _without_large(row: Any) -> Any:
    """``row`` as the checkpoint keeps it: large arguments replaced by a description."""
    def light(values: Sequence[Any]) -> Sequence[Any] | None:
        if not any(is_large(v) for v in values):
            return None
        return [_not_stored(v) if is_large(v) else v for v in values]

    if type(row) in (list, tuple):
        kept = light(row)
        return row if kept is None else type(row)(kept)
    if isinstance(row, TypedRow):
        args = light(row.args)
        kwargs = {k: _not_stored(v) if is_large(v) else v for k, v in row.kwargs.items()}
        return TypedRow(row.args if args is None else tuple(args), kwargs)
    if isinstance(row, Mapping):
        return {k: _not_stored(v) if is_large(v) else v for k, v in row.items()}
    if isinstance(row, (list, tuple)):  # a subclass (a NamedTuple): its positions, as a list
        kept = light(row)
        return row if kept is None else kept
    return row


# -- opening a file --------------------------------------------------------------------------


def _is_ours(path: str) -> bool:
    """True for our checkpoint, False for a missing file; CheckpointError otherwise.

    Reads only, and without SQLite while the header says the file is not ours: a file that is
    not ours is never written to, and nothing is made beside it. An empty file is not ours:
    thread-chunks never leaves one (a new checkpoint appears whole, see :func:`_connect`), so
    it is someone else's, and refused.
    """
    status = _files.existing(path)
    if status is None:
        return False
    if status.st_size == 0:
        raise CheckpointError(
            f"{path!r} is an empty file, not a thread-chunks checkpoint (thread-chunks never "
            "leaves an empty one); refusing to take it over: remove it or choose another path")
    app_id = _files.application_id(_files.header(path))
    if app_id is None:
        raise CheckpointError(
            f"{path!r} is not a thread-chunks checkpoint (not an SQLite file); "
            "refusing to touch it: choose another path or remove it yourself")
    if app_id != APPLICATION_ID and _files.has_wal(path):
        app_id = _application_id_in_wal(path)  # an older thread-chunks killed early
    if app_id != APPLICATION_ID:
        raise CheckpointError(
            f"{path!r} is an SQLite database of another program, not a thread-chunks "
            "checkpoint; refusing to touch it: choose another path or remove it yourself")
    return True


def _open_to_read(path: str) -> sqlite3.Connection:
    """A connection to read ``path`` that leaves no ``-wal``/``-shm`` file of its own.

    A WAL file read through a read-only connection gets both files made beside it, and a
    read-only connection cannot remove them when it closes. When neither exists (no one has
    the file open, and its last writer closed cleanly), the file is opened for writing, but
    only read: the last connection to close removes both, as SQLite does for any writer (not
    while another process has the file open, which then owns them). Otherwise (a run is on,
    or a killed one left them) and for a file we may not write, read-only as before.
    """
    if os.access(path, os.W_OK) and not any(
            os.path.exists(path + suffix) for suffix in ("-wal", "-shm")):
        try:
            return sqlite3.connect(f"file:{path}?mode=rw", uri=True)
        except sqlite3.Error:
            pass
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _application_id_in_wal(path: str) -> int:
    """The application id as SQLite reads it through the file's ``-wal`` (where a
    thread-chunks before 1.2 first wrote it)."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return int(conn.execute("PRAGMA application_id").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise CheckpointError(
            f"{path!r} is not a readable thread-chunks checkpoint: {exc}") from exc


def _fill(fresh: str) -> None:
    """A new checkpoint's content (marked ours, the tables), written before it is put in
    place."""
    with closing(sqlite3.connect(fresh, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.executescript(_SCHEMA)


_LOCKS_REFUSED = ("database is locked", "disk i/o error", "locking protocol")


def _cannot_write(path: str, exc: Exception) -> CheckpointError:
    if isinstance(exc, sqlite3.OperationalError) and any(
            text in str(exc).lower() for text in _LOCKS_REFUSED):
        return CheckpointError(
            f"cannot write checkpoint {path!r}: SQLite could not lock it ({exc}): another "
            "program holds it, or this filesystem refuses file locks (Lustre mounted without "
            "flock, some NFS setups); put the checkpoint in another directory (node-local "
            "scratch, or a mount with working locks)")
    return CheckpointError(f"cannot write checkpoint {path!r}: {exc}")


def _connect(path: str, create: bool, network: bool = False) -> sqlite3.Connection:
    """A writing connection to our checkpoint at ``path``, made first when ``create`` (whole,
    see :func:`_files.create`). On a ``network`` filesystem SQLite keeps the WAL's index in
    this process's memory (``locking_mode=EXCLUSIVE`` before the first access: no ``-shm``,
    no shared memory over the network) and holds the file's lock until it closes; readers
    then ask the writer lock who writes (:func:`_reading`)."""
    if create and not _files.create(path, _fill) and not _is_ours(path):
        raise CheckpointError(f"checkpoint {path!r} was replaced by another program")
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise _cannot_write(path, exc) from exc
    try:
        if network:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_MS)}")
        if hasattr(conn, "setlimit"):  # Python 3.11+: never more than MAX_RECORD_BYTES
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_RECORD_BYTES)
        conn.execute("BEGIN IMMEDIATE")  # proves we can write, before any call starts
        conn.execute("COMMIT")
        conn.executescript(_SCHEMA)
    except (OSError, sqlite3.Error) as exc:
        _close_quietly(conn)
        raise _cannot_write(path, exc) from exc
    return conn


def _open_for_writing(path: str, rows_total: int = 0
                      ) -> tuple[sqlite3.Connection, WriterLock, bool]:
    """The writer lock of ``path`` and a writing connection to it (made when missing), and
    whether it is on a network filesystem. A file not ours is refused before anything is
    made beside it; a run holding the lock is a :class:`CheckpointInUseError`."""
    _is_ours(path)
    network = _files.on_network(path)
    lock = WriterLock.acquire(path, rows_total=rows_total)
    try:
        conn = _connect(path, create=not _is_ours(path), network=network)
    except BaseException:
        lock.release()
        raise
    return conn, lock, network


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


_FUNCTION_META = ("format_version", "scheme", "func_name", "identity", "by_hand")


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


def _stored_digest(identity: Identity) -> bytes | None:
    """The digest an identity is kept under: with the row-key scheme (results keyed by
    another scheme are never matched). None when the identity is unknown."""
    if identity.digest is None:
        return None
    return hashlib.sha256(SCHEME.encode() + b"\x00" + identity.digest).digest()


def _new_identity(conn: sqlite3.Connection, kind: str, func_name: str,
                  parts: Sequence[tuple[str, str]], digest: bytes | None = None) -> int:
    """The id of the identity ``digest`` (made now, or its ``last_used`` updated); without a
    digest, a fresh identity no run can ever match (inside a transaction)."""
    now = time.time()
    if digest is None:
        digest = kind.encode() + b" " + os.urandom(16)  # never a 32-byte digest: never matched
    found = conn.execute("SELECT id FROM identities WHERE digest = ?", (digest,)).fetchone()
    if found is not None:
        conn.execute("UPDATE identities SET last_used = ?, func_name = ? WHERE id = ?",
                     (now, func_name, found[0]))
        return int(found[0])
    cursor = conn.execute(
        "INSERT INTO identities (digest, func_name, parts, first_seen, last_used, kind) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (digest, func_name, json.dumps([list(part) for part in parts]), now, now, kind))
    return int(cursor.lastrowid or 0)


def _split(blob: bytes) -> list[bytes]:
    return [blob[i:i + KEY_BYTES] for i in range(0, len(blob), KEY_BYTES)]


def _upgrade(conn: sqlite3.Connection, path: str) -> None:
    """A file of format 3 (the latest run's keys in one ``meta`` blob), 4 (no memory
    column), 5 (no staged results) or 6 (no identities) becomes format 7 (in a transaction):
    nothing recorded is lost. Its results go under one identity of kind "legacy": listed and
    prunable, never reused (the identity they were recorded under was narrower: what a
    function reached was not in it). A file of a newer format is a CheckpointError: it is not
    changed."""
    meta = _meta(conn, "format_version", "keys", "func_name", "func_digest", "by_hand")
    version = meta.get("format_version")
    if version is None or version == FORMAT_VERSION:
        return
    if version not in (3, 4, 5, 6):
        raise CheckpointError(
            f"checkpoint {path!r} was written by another version of thread-chunks (format "
            f"{version}, this version reads formats 3 to {FORMAT_VERSION}); it is left as it "
            "is: choose another path, or run that version")
    if version == 3:
        conn.execute("DELETE FROM run")
        conn.executemany("INSERT INTO run (row, key) VALUES (?, ?)",
                         enumerate(_split(meta.get("keys", b""))))
        conn.execute("DELETE FROM meta WHERE key = 'keys'")
    if version == 6:
        _fold(conn)  # what a killed run of format 6 staged
    name = str(meta.get("func_name", "function"))
    kind = _BY_HAND if meta.get("by_hand") else _LEGACY
    legacy = _new_identity(conn, kind, name, [(f"{kind} (format {version})",
                                               str(meta.get("func_digest") or ""))])
    memory = "memory" if _has_memory(conn) else "NULL"
    conn.execute("ALTER TABLE results RENAME TO results_old")
    conn.execute(_RESULTS)
    conn.execute(f"INSERT INTO results SELECT key, ok, value, started, ended, actor, recorded, "
                 f"{memory}, ? FROM results_old ORDER BY rowid", (legacy,))
    conn.execute("DROP TABLE results_old")
    _renew_staged(conn)
    conn.execute("DELETE FROM meta WHERE key IN ('func_digest', 'identity', 'list_key')")
    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                     [("format_version", FORMAT_VERSION), ("identity", legacy)])


def _renew_staged(conn: sqlite3.Connection) -> None:
    """An empty ``staged`` with ``results``' columns as they are now (inside a transaction)."""
    conn.execute("DROP TABLE IF EXISTS staged")
    conn.execute(_STAGED)


def _fold(conn: sqlite3.Connection) -> None:
    """Move the staged results into ``results`` (inside a transaction), in the order they
    were recorded: the latest of a key wins (``INSERT OR REPLACE``, as recording into
    ``results`` does), and a run's results lie in ``results`` about in its rows' order, so a
    rerun of the list reads them back page after page. The key index, updated at random, is
    held in a page cache of :data:`_FOLD_CACHE_KIB` meanwhile: each of its pages is written
    once."""
    columns = ", ".join(name for _, name, *_ in conn.execute("PRAGMA table_info(staged)"))
    (cache,) = conn.execute("PRAGMA cache_size").fetchone()
    conn.execute(f"PRAGMA cache_size = -{_FOLD_CACHE_KIB}")
    try:
        conn.execute(f"INSERT OR REPLACE INTO results ({columns}) SELECT {columns} "
                     "FROM staged ORDER BY rowid")
        conn.execute("DELETE FROM staged")
    finally:
        conn.execute(f"PRAGMA cache_size = {int(cache)}")


def _has_memory(conn: sqlite3.Connection) -> bool:
    """Whether the results table has the memory column (format 5)."""
    return any(column[1] == "memory" for column in conn.execute("PRAGMA table_info(results)"))


def _unpicklable(row: int, value: object) -> str:
    return f"<row {row}: not recorded, {type(value).__name__} cannot be pickled>"


def _pickle_rows(rows: Sequence[Any], undigestable: Sequence[int], light: bool,
                 opaque: Sequence[int] | None = None) -> bytes:
    """The parameter list, pickled once. Rows that cannot be pickled (and undigestable rows,
    which may hold Ray references) are replaced by a description; so are large arguments
    when ``light`` (the rows' identity is their digest: the file needs no copy of them),
    looked for only in the ``opaque`` rows when they are known (:class:`RowKeys`)."""
    listed = list(rows)
    if light:
        for i in range(len(listed)) if opaque is None else opaque:
            listed[i] = _without_large(listed[i])
    for i in undigestable:
        listed[i] = _unpicklable(i, listed[i])
    try:
        return pack(listed)
    except Exception:
        kept: list[Any] = []
        for i, row in enumerate(listed):
            try:
                pack(row)
                kept.append(row)
            except Exception:
                kept.append(_unpicklable(i, row))
        return pack(kept)


def _write_run(conn: sqlite3.Connection, rows: Sequence[Any], keys: bytes,
               undigestable: Sequence[int], *, light: bool = True, table: bool = True,
               opaque: Sequence[int] | None = None, list_key: bytes | None = None) -> None:
    """Record the latest run's list (inside a transaction); the 1.0.5 index/done go. When
    ``table``, the ``run`` table is emptied and filled with the keys (else the caller does it:
    :func:`_find_reused`). ``list_key``: the list's digest when it has one
    (:func:`~thread_chunks._digest.list_key`: the next run of the same list reads the keys
    back instead of computing them), stored with the digest of these keys (see
    :func:`_keys_of_list`)."""
    count = len(keys) // KEY_BYTES
    _begin_run(conn)
    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
        ("parameters", _pickle_rows(rows, undigestable, light, opaque)), ("count", count),
        ("list_key", None if list_key is None else list_key + hashlib.sha256(keys).digest())])
    if table:
        conn.execute("DELETE FROM run")
        _insert_run(conn, keys)


_UNKNOWN = 2
"""A row's state in the ``states`` given to :func:`_insert_run`: not known (NULL)."""


_STATE = "CASE substr(?2, row + 1, 1) WHEN x'01' THEN 1 WHEN x'00' THEN 0 END"
"""Row ``row``'s state in the ``states`` blob ``?2`` (see :func:`_insert_run`), in SQL."""


def _renew_run(conn: sqlite3.Connection, keys: bytes, states: bytes) -> None:
    """Make the ``run`` table hold ``keys`` in ``states`` (see :func:`_insert_run`). When it
    holds these keys already (the same list run again, compared by SQLite), only the states
    that changed are written: no row is rewritten."""
    count = len(keys) // KEY_BYTES
    (same,) = conn.execute(
        f"SELECT count(*) = ?2 AND count(CASE WHEN key != substr(?1, row * {KEY_BYTES} + 1, "
        f"{KEY_BYTES}) THEN 1 END) = 0 FROM run", (keys, count)).fetchone()
    if same:
        conn.execute(f"UPDATE run SET ok = {_STATE} WHERE ok IS NOT {_STATE}", (b"", states))
        return
    conn.execute("DELETE FROM run")
    _insert_run(conn, keys, states)


def _begin_run(conn: sqlite3.Connection) -> None:
    """A run starts (inside a transaction): nothing reused yet; the 1.0.5 index/done go."""
    conn.execute("DELETE FROM meta WHERE key IN ('index', 'done', 'run_ended', ?)",
                 (RUNNING_KEY,))
    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                     [("reused", 0), ("run_started", time.time())])


def _keys_digest(stored: object, listed: bytes | None) -> bytes | None:
    """The digest of the ``run`` table's keys that meta's ``list_key`` (``stored``) holds for
    the list digest ``listed``; None when it names another list, or none."""
    if listed is None or not isinstance(stored, bytes) or not stored.startswith(listed):
        return None
    return stored[len(listed):]


def _keys_of_list(conn: sqlite3.Connection, stored: object, listed: bytes | None,
                  count: int) -> list[bytes] | None:
    """The row keys of the list whose digest is ``listed``, read from the ``run`` table, when
    ``stored`` (meta's ``list_key``) says the table holds them: the same list digest, and the
    digest of the table's keys as they were written with it. Whatever rewrote the table
    since (an older thread-chunks, which knows no ``list_key``) changed the latter: then
    None, and the keys are computed."""
    expected = _keys_digest(stored, listed)
    if expected is None:
        return None
    (whole,) = conn.execute("SELECT count(*) = ?1 AND coalesce(max(row), -1) = ?1 - 1 "
                            "FROM run", (count,)).fetchone()
    if not whole:
        return None
    keys = list(map(_FIRST, conn.execute("SELECT key FROM run ORDER BY row")))
    if hashlib.sha256(b"".join(keys)).digest() != expected:
        return None
    return keys


def _insert_run(conn: sqlite3.Connection, keys: bytes, states: bytes = b"") -> None:
    """The ``run`` table's rows: each row's key and its state (one byte a row: 1 done, 0
    failed, :data:`_UNKNOWN` or none given: NULL), cut from the two blobs by SQLite itself (no
    Python per row)."""
    count = len(keys) // KEY_BYTES
    if count:
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?3) "
            f"INSERT INTO run SELECT i, substr(?1, i * {KEY_BYTES} + 1, {KEY_BYTES}), "
            f"{_STATE.replace('row', 'i')} FROM n",
            (keys, states, count))


def _find_reused(conn: sqlite3.Connection, keys: Sequence[bytes], blob: bytes, identity: int
                 ) -> tuple[array[int], array[int], array[int]]:
    """Fill the ``run`` table with the keys (``blob``: ``keys`` joined) and each row's state;
    the rows whose key is recorded as a success under ``identity``, ascending, the size of
    each one's pickled result and its rowid in ``results`` (no result is read). Inside a
    transaction, with nothing staged.

    When the file holds not many more results of this identity than the list has rows, one
    scan of their keys into memory matches them (no lookup per row: SQLite's costs ~2.5 us;
    the whole table is scanned, filtered in SQL, when it holds little else); otherwise the
    run's keys are joined with the results (the work follows the list).
    """
    rows, sizes, ids = array("q"), array("q"), array("q")
    count = len(keys)
    (mine,) = conn.execute("SELECT count(*) FROM results WHERE identity = ?",
                           (identity,)).fetchone()
    if mine <= 4 * count:
        alone = conn.execute("SELECT count(*) <= 1 FROM identities").fetchone()[0]
        total = mine if alone else conn.execute("SELECT count(*) FROM results").fetchone()[0]
        scan = "NOT INDEXED" if total <= 2 * mine else ""  # else the index finds them
        # key -> a success's rowid and size in one int (-1: a failure): the dict is built,
        # and probed, in C
        known = dict(conn.execute(
            "SELECT key, CASE WHEN ok = 1 THEN rowid << 32 | "
            "min(coalesce(length(value), 0), 4294967295) ELSE -1 END "
            f"FROM results {scan} WHERE identity = ?", (identity,)))
        hits = list(map(known.get, keys))
        del known
        rows.extend([row for row, hit in enumerate(hits) if hit is not None and hit >= 0])
        packed = [hit for hit in hits if hit is not None and hit >= 0]
        ids.extend([hit >> 32 for hit in packed])
        sizes.extend([hit & 0xFFFFFFFF for hit in packed])
        states = bytes([_UNKNOWN if hit is None else 0 if hit < 0 else 1 for hit in hits])
        _renew_run(conn, blob, states)
        return rows, sizes, ids
    conn.execute("DELETE FROM run")
    _insert_run(conn, blob)
    found: list[tuple[int, int]] = []
    for row, ok, size, rowid in conn.execute(
            "SELECT r.row, s.ok, length(s.value), s.rowid FROM run AS r JOIN results AS s "
            "ON s.identity = ? AND s.key = r.key ORDER BY r.row", (identity,)):
        found.append((ok, row))
        if ok:
            rows.append(row)
            sizes.append(size or 0)
            ids.append(rowid)
    conn.executemany("UPDATE run SET ok = ? WHERE row = ?", found)
    return rows, sizes, ids


def _adopt(conn: sqlite3.Connection, binder: Binder, hand: int, identity: int) -> None:
    """Re-key the rows of a checkpoint written by ``Checkpoint(...)`` (which knew no
    signature, under the identity ``hand``) to this function's row identity and move them to
    ``identity`` (inside a transaction)."""
    meta = _meta(conn, "parameters")
    if "parameters" in meta:
        parameters = list(_unpickle(meta["parameters"]))
        old = [key for (key,) in conn.execute("SELECT key FROM run ORDER BY row")]
        rows = [normalised for normalised in map(_as_call, parameters)]
        new = row_keys(binder, rows).keys
        conn.executemany(
            "UPDATE OR REPLACE results SET key = ?, identity = ? WHERE key = ? AND identity = ?",
            [(n, identity, o, hand) for n, o in zip(new, old, strict=True)])
    if not conn.execute("SELECT 1 FROM results WHERE identity = ? LIMIT 1", (hand,)).fetchone():
        conn.execute("DELETE FROM identities WHERE id = ?", (hand,))
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
    """An open checkpoint for one run: records results as they arrive, by row identity, and
    reads back the results it reuses as they are handed out."""

    def __init__(self, path: str, conn: sqlite3.Connection, keys: bytes, *,
                 lock: WriterLock | None = None, network: bool = False) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._reader: sqlite3.Connection | None = None
        self._keys = keys  # row r's key: keys[r * KEY_BYTES:(r + 1) * KEY_BYTES]
        self._limit = conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH) if hasattr(
            conn, "getlimit") else MAX_RECORD_BYTES
        self._warned = False
        self.reused: array[int] = array("q")
        """The rows of this run already recorded as a success (ascending): not run again."""
        self._sizes: array[int] = array("q")
        self._ids: array[int] = array("q")  # each reused row's rowid in results
        self._staged = 0  # results this store staged and did not fold yet
        self.identity = 0
        """The id of this run's identity in the file (its results are recorded under it)."""
        self.peak_memory: int | None = None
        """The largest peak memory measured for a call of this function, in the file."""
        self._flight = InFlight()
        self._lock = lock  # this run's writer lock (released once the store is closed)
        self._network = network  # on a network filesystem: one connection reads and writes
        self._done = 0  # successes recorded by this run (the lease tells them)
        if lock is not None:
            lock.rows_done = lambda: len(self.reused) + self._done
        self._signalled = _signals.run_started()  # SIGTERM: KeyboardInterrupt meanwhile

    @classmethod
    def open(cls, path: str | os.PathLike[str], func: Callable[..., Any] | None, name: str,
             calls: Collection[tuple[Sequence[Any], dict[str, Any] | None]], rows: Sequence[Any],
             identity: Identity | None = None) -> Store:
        """Open or create the checkpoint at ``path`` for a run of ``func`` over ``calls``
        (each row's ``(args, kwargs)``; ``rows`` are the same, as the user gave them: the
        1.0.5 view shows them). ``identity`` is the function's (:func:`identify`, computed
        once per map by the caller; computed here when not given).

        ``store.reused`` lists the rows already known *under this identity*, read back by
        :meth:`read_reused`. Nothing is ever deleted: results of other identities (another
        function, an earlier version of this one) stay in the file, and when none of this
        identity's is there although the file holds others, a
        :class:`CheckpointRestartWarning` says what changed. Every failure of the file is a
        :class:`CheckpointError` naming it.
        """
        path = os.fspath(path)
        _wait_for_close(path)
        _is_ours(path)  # a file not ours: refused before anything else
        func_name = getattr(func, "__name__", name) if func is not None else name
        if identity is None:
            identity = _identify(func)
        digest = _stored_digest(identity)
        binder = Binder(func)
        listed = list_key(binder, rows) if digest is not None else None
        if listed is not None and digest is not None:  # the list and the identity: a rerun
            listed = hashlib.sha256(listed + digest).digest()  # of both reads its keys back
        conn, lock, network = _open_for_writing(path, len(calls))
        store = cls(path, conn, b"", lock=lock, network=network)
        try:
            known = _keys_digest(_meta(conn, "list_key").get("list_key"), listed) is not None
            found = None if known else row_keys(binder, calls, large=SHARE_AT_BYTES)
            with _transaction(conn):
                _upgrade(conn, path)
                old = _meta(conn, *_FUNCTION_META, "list_key")
                if "func_name" not in old:  # a new file
                    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                        ("format_version", FORMAT_VERSION), ("scheme", SCHEME),
                        ("created", time.time())])
                else:
                    _fold(conn)  # what the previous run staged, if it could not fold it
                    _renew_staged(conn)
                kind = _IDENTIFIED if digest is not None else _UNIDENTIFIABLE
                store.identity = _new_identity(conn, kind, func_name, identity.parts, digest)
                if old.get("by_hand"):
                    if old.get("func_name") == func_name:  # 1.0.5: adopted by name
                        _adopt(conn, binder, int(old["identity"]), store.identity)
                    else:
                        conn.execute("UPDATE meta SET value = 0 WHERE key = 'by_hand'")
                conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                    ("func_name", func_name), ("identity", store.identity)])
                keys = _keys_of_list(conn, old.get("list_key"), listed, len(calls)) if (
                    not old.get("by_hand")) else None
                if keys is not None:  # the latest run's list, parameters and keys: kept
                    undigestable: Sequence[int] = ()
                    _begin_run(conn)
                    store._keys = b"".join(keys)
                else:
                    keys, undigestable, opaque = found or row_keys(
                        binder, calls, large=SHARE_AT_BYTES)
                    store._keys = b"".join(keys)
                    _write_run(conn, rows, store._keys, undigestable, table=False,
                               opaque=opaque, list_key=listed)
                store.reused, store._sizes, store._ids = _find_reused(
                    conn, keys, store._keys, store.identity)
                del keys, found
                conn.execute("UPDATE meta SET value = ? WHERE key = 'reused'",
                             (len(store.reused),))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('signature', ?)",
                             (_signature_blob(binder.signature),))
                stored = conn.execute("SELECT count(*) FROM results WHERE ok = 1").fetchone()[0]
                store.peak_memory = conn.execute(
                    "SELECT max(memory) FROM results NOT INDEXED WHERE identity = ?",
                    (store.identity,)).fetchone()[0]
                reason = None if store.reused else _why_nothing(
                    conn, store.identity, func_name, identity)
        except sqlite3.Error as exc:
            store.close()
            raise CheckpointError(f"cannot use checkpoint {path!r}: {exc}") from exc
        except BaseException:
            store.close()
            raise
        if reason:
            warn_user(f"checkpoint {path!r}: nothing of it is reused ({reason}); its "
                      "results are kept in the file (thread-chunks inspect lists them, "
                      "thread-chunks prune removes them)", CheckpointRestartWarning)
        log.info("checkpoint %s: reused %d of %d rows (%d results stored)", path,
                 len(store.reused), len(calls), stored)
        if undigestable:
            log.info("checkpoint %s: %d rows hold arguments that cannot be digested (first: "
                     "row %d); they are computed again in every run", path,
                     len(undigestable), undigestable[0])
        return store

    def _key(self, row: int) -> bytes:
        return self._keys[row * KEY_BYTES:(row + 1) * KEY_BYTES]

    def read_reused(self) -> Iterator[tuple[int, bytes]]:
        """``(row, pickled result)`` for every reused row, ascending, read from the file a
        few MB at a time (:data:`_REUSED_CHUNK_BYTES`), never all at once.

        Read by rowid (found when the file was opened; each checked against its key, the
        identity), through a connection of its own: each read is a short transaction, so the
        file's write-ahead log is not held back between reads. A rerun of the same list finds
        its results in consecutive rowids (a fold keeps the order they were recorded in):
        such a chunk is one range scan.
        """
        for rows, blobs in self.reused_chunks():
            yield from zip(rows, blobs, strict=True)

    def reused_chunks(self) -> Iterator[tuple[list[int], list[bytes]]]:
        """:meth:`read_reused` a chunk at a time: the rows and their pickled results (each
        chunk checked against its keys in C)."""
        rows, sizes, ids, n = self.reused, self._sizes, self._ids, len(self.reused)
        start = 0
        while start < n:
            end, weight = start + 1, sizes[start]
            while end < n and end - start < _REUSED_CHUNK_ROWS and \
                    weight + sizes[end] <= _REUSED_CHUNK_BYTES:
                weight += sizes[end]
                end += 1
            wanted = ids[start:end].tolist()
            try:
                found = self._read(wanted)
            except sqlite3.Error as exc:
                raise CheckpointError(
                    f"cannot read the reused results of checkpoint {self.path!r}: {exc}"
                ) from exc
            chunk = rows[start:end].tolist()
            blobs = list(map(_SECOND, found))
            if list(map(_FIRST, found)) != self._keys_of(chunk) or None in blobs:
                row = next(row for row, (key, blob) in zip(chunk, found, strict=True)
                           if blob is None or key != self._key(row))
                raise CheckpointError(
                    f"checkpoint {self.path!r} lost the result of row {row} during the "
                    "run (another process replaced its results?); run again to compute it")
            del found
            yield chunk, blobs
            start = end

    def _keys_of(self, rows: list[int]) -> list[bytes]:
        """The keys of ``rows`` (built in C when they are consecutive)."""
        first, count = rows[0], len(rows)
        if rows[-1] - first == count - 1:  # ascending, so consecutive
            return list(map(_FIRST, struct.iter_unpack(
                f"{KEY_BYTES}s", self._keys[first * KEY_BYTES:(first + count) * KEY_BYTES])))
        return [self._key(row) for row in rows]

    def _read(self, wanted: list[int]) -> list[tuple[bytes | None, bytes | None]]:
        """``(key, pickled result)`` of the successes at these rowids, in their order
        (``(None, None)`` where there is none)."""
        reader = self._open_reader()
        first = wanted[0]
        if wanted == list(range(first, first + len(wanted))):
            found: list[tuple[bytes | None, bytes | None]] = reader.execute(
                "SELECT key, value FROM results NOT INDEXED WHERE rowid BETWEEN ? AND ? AND "
                "ok = 1 AND identity = ? ORDER BY rowid",  # by rowid, not (identity, key)
                (first, wanted[-1], self.identity)).fetchall()
            if len(found) == len(wanted):  # each rowid of the range, once, in order
                return found
        by_id = {rowid: (key, value) for rowid, key, value in reader.execute(
            "SELECT rowid, key, value FROM results NOT INDEXED WHERE ok = 1 AND identity = ? "
            "AND rowid IN "
            f"({', '.join('?' * len(wanted))})", [self.identity, *wanted])}
        return [by_id.get(rowid, (None, None)) for rowid in wanted]

    def _open_reader(self) -> sqlite3.Connection:
        if self._network:  # the writer holds the file's lock: it reads too
            if self._conn is None:
                raise sqlite3.OperationalError("the checkpoint was closed (saving stopped)")
            return self._conn
        if self._reader is None:
            self._reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                           check_same_thread=False)
        return self._reader

    def record(self, records: list[Outcome], actor: str) -> None:
        """Save finished calls in one transaction; a success's result is saved as the actor
        pickled it. A result too large to record is skipped with a warning naming its row;
        any other failure warns once and stops saving.

        A batch of small results is appended to ``staged``; a batch holding a larger one
        folds what is staged first, then goes into ``results`` (so the latest of a key is
        always the one folded last). Each run of consecutive rows' states is one ``UPDATE``
        of the ``run`` table."""
        if self._conn is None:
            return
        if self._lock is not None and self._lock.lost:
            self._give_up(CheckpointInUseError(
                "another run took its lock over (this run's lease ran out)", path=self.path))
            return
        now, limit = time.time(), self._limit - 4096  # room for the rest of the row
        rows = self._plain_rows(records, actor, now, limit)
        plain = staged = bool(rows)  # consecutive rows, all succeeded, every result small
        for r in () if plain else records:
            if r[OK] and weight(r[VALUE]) > limit:
                self._skip(r[ROW], weight(r[VALUE]))
                continue
            blob = in_band(r[VALUE]) if r[OK] else _pack_failure(r[VALUE])
            if len(blob) > limit:
                self._skip(r[ROW], len(blob))
                continue
            rows.append((self._key(r[ROW]), int(r[OK]), blob, r[STARTED], r[ENDED], actor, now,
                         r[MEMORY], self.identity))
        staged = staged or all(len(row[2]) <= _STAGE_MAX_BYTES for row in rows)
        try:
            with _transaction(self._conn):
                if not staged and self._staged:
                    _fold(self._conn)
                _insert_results(self._conn, "staged" if staged else "results", rows)
                self._conn.executemany(
                    "UPDATE run SET ok = ? WHERE row BETWEEN ? AND ?",
                    [[1, records[0][ROW], records[-1][ROW]]] if plain else _spans(records))
                self._flight.finished(list(map(_ROW, records)))
                self._write_flight()
            self._staged = self._staged + len(rows) if staged else 0
            self._done += len(rows) if plain else sum(1 for r in records if r[OK])
        except Exception as exc:
            self._give_up(exc)

    def _plain_rows(self, records: list[Outcome], actor: str, now: float, limit: int
                    ) -> list[tuple[Any, ...]]:
        """The rows to record for a batch of consecutive rows that all succeeded with small
        results pickled in band (the usual batch), built in C; [] for any other batch."""
        values = list(map(_VALUE, records))
        if not (all(map(_OK, records)) and _BYTES.issuperset(map(type, values))
                and max(map(len, values)) <= min(_STAGE_MAX_BYTES, limit)
                and consecutive(records)):
            return []
        keys = self._keys_of(list(map(_ROW, records)))
        return list(zip(keys, repeat(1), values, map(_STARTED, records), map(_ENDED, records),
                        repeat(actor), repeat(now), map(_MEMORY, records),
                        repeat(self.identity)))

    def sending(self, rows: Sequence[int]) -> None:
        """Note ``rows`` as sent to an actor, in one small transaction (see ``_inflight``):
        another process reading the file sees which rows are running. Recording their
        outcomes forgets them; closing the store forgets the rest."""
        if self._conn is None or not rows:
            return
        self._flight.sent(rows)
        try:
            with _transaction(self._conn):
                self._write_flight()
        except Exception as exc:
            self._give_up(exc)

    def _write_flight(self) -> None:
        assert self._conn is not None
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           (RUNNING_KEY, self._flight.blob()))

    def _skip(self, row: int, size: int) -> None:
        warn_user(
            f"row {row}'s result ({size / 2**20:.1f} MiB pickled) is larger than a checkpoint "
            f"can record ({self._limit / 2**20:.0f} MiB, SQLite's limit); it is returned but "
            f"not saved to {self.path!r} (a rerun computes it again); the other rows are saved",
            CheckpointFailedWarning)

    def _give_up(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            warn_user(
                f"saving to checkpoint {self.path!r} failed ({type(exc).__name__}: {exc}); "
                "the computation goes on and returns its results, but it is no longer saved "
                "(a full disk or a lock held by another process)",
                CheckpointFailedWarning)
        self._stop_saving()

    def close(self) -> None:
        """Stop saving and reading. Everything recorded is already committed."""
        if self._reader is not None:
            _close_quietly(self._reader)
            self._reader = None
        self._stop_saving(ended=time.time())
        if self._signalled:
            self._signalled = False
            _signals.run_ended()

    def _stop_saving(self, ended: float | None = None) -> None:
        """Closing folds the staged results into ``results`` (about 2 us a row) and the WAL
        back into the file (a few ms of I/O), done in a background thread so results are not
        held up by it (the interpreter waits for it at exit; a run opening the same file in
        this process waits for it first, another process waits for its lock). Killed
        meanwhile, nothing is lost: the next run folds them. ``ended``: when the run ended
        (closed, not given up), recorded with the fold; no row is running any more."""
        if self._conn is not None:
            closing_thread = threading.Thread(
                target=_fold_and_close, args=(self._conn, self._staged, ended, self._lock),
                name="thread-chunks checkpoint close")
            with _closing_lock:
                _closing[os.path.realpath(self.path)] = closing_thread
                closing_thread.start()
            self._conn = None


def _pack_failure(error: object) -> bytes:
    try:
        return pack(error)
    except Exception:
        return pack(RuntimeError(f"{type(error).__name__}: {error} (could not be pickled)"))


def _close_quietly(conn: sqlite3.Connection) -> None:
    try:
        conn.close()
    except sqlite3.Error:
        pass


def _insert_results(conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    """Record ``rows`` (each a value for every column, in order) into ``results`` (the
    latest of a key replacing the one before) or ``staged`` (appended)."""
    if rows:
        verb = "INSERT OR REPLACE" if table == "results" else "INSERT"
        conn.executemany(f"{verb} INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)


def _signature_blob(signature: inspect.Signature | None) -> bytes | None:
    """The parameters of the run's function as the table view binds rows to them: ``(name,
    kind, has a default, default)`` each, pickled (a default that cannot be is described,
    and so is a large one, as a large argument is); None without a signature."""
    if signature is None:
        return None
    params: list[tuple[str, int, bool, Any]] = []
    for p in signature.parameters.values():
        default = None if p.default is inspect.Parameter.empty else p.default
        if is_large(default):
            default = _not_stored(default)
        try:
            pack(default)
        except Exception:
            default = NotStored(f"{type(default).__name__} (could not be pickled)")
        params.append((p.name, int(p.kind), p.default is not inspect.Parameter.empty, default))
    return pack(params)


def _spans(records: Sequence[Outcome]) -> list[list[int]]:
    """``[ok, first, last]`` for each run of consecutive rows in the same state (the latest
    outcome of a row counts): one ``UPDATE`` each, where a batch usually needs one."""
    if not records:
        return []
    if consecutive(records) and len({r[OK] for r in records}) == 1:  # the usual batch: one span
        return [[int(records[0][OK]), records[0][ROW], records[-1][ROW]]]
    states = {r[ROW]: int(r[OK]) for r in records}
    spans: list[list[int]] = []
    for row in sorted(states):
        ok = states[row]
        if spans and spans[-1][0] == ok and spans[-1][2] == row - 1:
            spans[-1][2] = row
        else:
            spans.append([ok, row, row])
    return spans


_closing: dict[str, threading.Thread] = {}
"""Per file (its real path), the thread closing this process's latest store of it."""
_closing_lock = threading.Lock()


def _wait_for_close(path: str) -> None:
    """Let this process's store of ``path`` closing in the background finish its fold."""
    with _closing_lock:
        pending = _closing.pop(os.path.realpath(path), None)
    if pending is not None:
        pending.join()


def _fold_and_close(conn: sqlite3.Connection, staged: int, ended: float | None,
                    lock: WriterLock | None = None) -> None:
    """What a store does when it closes, in its background thread (see ``_stop_saving``);
    the writer lock goes last."""
    try:
        if staged or ended is not None:
            with _transaction(conn):
                if staged:
                    _fold(conn)
                if ended is not None:
                    conn.execute("DELETE FROM meta WHERE key = ?", (RUNNING_KEY,))
                    conn.execute("INSERT OR REPLACE INTO meta VALUES ('run_ended', ?)",
                                 (ended,))
    except sqlite3.Error as exc:  # the results stay staged: the next run folds them
        log.warning("checkpoint: folding %d staged results failed (%s); the next run "
                    "folds them", staged, exc)
    finally:
        _close_quietly(conn)
        if lock is not None:
            lock.release()


def _identify(func: object) -> Identity:
    """``func``'s identity, never raising: unknown (a miss) when it cannot be computed."""
    if func is None:
        return Identity(None, (), "the function the actors hold is not known")
    try:
        return identify(func)
    except Exception as exc:  # a miss, never a crash nor a match
        return Identity(None, (), f"{type(exc).__name__}: {exc}")


_CHANGED = (("function ", "the body of {name!r} changed"), ("helper ", "helper {what} changed"),
            ("constant ", "constant {what} changed"), ("default ", "a default changed ({what})"),
            ("depends_on", "depends_on changed"), ("actor_cls", "actor_cls changed"))
"""How a changed part of an identity is named, by what it is (its ``what`` starts so)."""


def _changes(old: Sequence[Sequence[str]], new: Sequence[tuple[str, str]], name: str
             ) -> list[str]:
    """What differs between two identities' parts, in words."""
    before, after = {what: hexed for what, hexed in old}, dict(new)
    said: list[str] = []
    for what in [*after, *(w for w in before if w not in after)]:
        if before.get(what) == after.get(what):
            continue
        shown = what.split(" ", 1)[-1]
        if what.startswith(("actor_cls", "depends_on")):  # one of each, or none
            said.append(f"{what.split(' ', 1)[0]} changed")
        elif what not in before:
            said.append(f"{what} was added")
        elif what not in after:
            said.append(f"{what} is gone")
        else:
            said.append(next((text.format(name=name, what=shown) for start, text in _CHANGED
                              if what.startswith(start)), f"{what} changed"))
    return list(dict.fromkeys(said))


def _why_nothing(conn: sqlite3.Connection, identity: int, func_name: str, current: Identity
                 ) -> str:
    """Why a run that reuses nothing finds nothing of its own although the file holds
    results ("" when it holds none of another identity, or some of this one: then the rows
    are new, nothing changed)."""
    if conn.execute("SELECT 1 FROM results WHERE identity = ? LIMIT 1",
                    (identity,)).fetchone():
        return ""
    other = conn.execute(
        "SELECT i.func_name, i.parts, i.kind FROM identities AS i WHERE i.id != ?1 AND "
        "EXISTS (SELECT 1 FROM results AS s WHERE s.identity = i.id) "
        "ORDER BY i.func_name = ?2 DESC, i.last_used DESC, i.id DESC LIMIT 1",
        (identity, func_name)).fetchone()
    if other is None:
        return ""
    name, parts, kind = other
    if current.digest is None:
        return (f"{func_name!r} cannot be identified ({current.unknown}): every row is "
                "computed again")
    if name != func_name:
        return f"the function changed from {name!r} to {func_name!r}"
    if kind == _LEGACY:
        return (f"the results of {name!r} in it were recorded by an older thread-chunks, "
                "which identified a function more narrowly: they are never reused")
    if kind == _UNIDENTIFIABLE:
        return f"the latest results of {name!r} in it were of a function that could not be " \
            "identified"
    changed = _changes(json.loads(parts), current.parts, func_name)
    return ", ".join(changed) if changed else f"the identity of {func_name!r} changed"


def _staged_view(unique: str) -> tuple[str, ...]:
    """For a reader of a file with staged results: ``results`` as the fold will make it, a
    view that shadows the table (the latest staged result of a ``unique`` key — ``key``, or
    ``identity, key`` from format 7 — in place of the stored one), read in the same snapshot
    as the rest."""
    return (
        f"CREATE TEMP TABLE latest AS SELECT {unique}, max(rowid) AS id FROM main.staged "
        f"GROUP BY {unique}",
        f"CREATE UNIQUE INDEX temp.latest_key ON latest ({unique})",
        "CREATE TEMP VIEW results AS "
        f"SELECT * FROM main.results WHERE ({unique}) NOT IN (SELECT {unique} FROM temp.latest) "
        "UNION ALL SELECT s.* FROM temp.latest AS l JOIN main.staged AS s ON s.rowid = l.id")


@contextmanager
def _reading(path: str | os.PathLike[str]) -> Iterator[tuple[sqlite3.Connection, dict[str, Any]]]:
    """A read-only connection to our checkpoint at ``path`` holding a run, and its meta (the
    parameter list left out). Every failure is a CheckpointError naming the file. A file of
    format 3 is read through a temporary ``run`` table, staged results through a temporary
    view (:func:`_staged_view`): the file is not changed."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path!r}")
    if not _is_ours(path):
        raise CheckpointError(f"{path!r} is empty, not a thread-chunks checkpoint")
    try:
        with closing(_read_only(path)) as conn:
            conn.execute("BEGIN")  # one snapshot for every read: a fold may commit meanwhile
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE key != 'parameters'"))
            version = meta.get("format_version")
            if version == 3:
                conn.execute("CREATE TEMP TABLE run (row INTEGER PRIMARY KEY, key BLOB, "
                             "ok INTEGER)")
                conn.executemany("INSERT INTO temp.run (row, key) VALUES (?, ?)",
                                 enumerate(_split(meta.get("keys", b""))))
                conn.execute("UPDATE temp.run SET ok = (SELECT s.ok FROM results AS s "
                             "WHERE s.key = temp.run.key)")
            elif version in (6, FORMAT_VERSION):
                if conn.execute("SELECT 1 FROM staged LIMIT 1").fetchone() is not None:
                    unique = "identity, key" if version == FORMAT_VERSION else "key"
                    for statement in _staged_view(unique):  # not executescript: it commits
                        conn.execute(statement)
            elif version not in (4, 5):
                raise CheckpointError(
                    f"checkpoint {path!r} was written by another version of thread-chunks "
                    f"(format {version}, this version reads formats 3 to {FORMAT_VERSION})")
            meta["_memory"] = "s.memory" if _has_memory(conn) else "NULL"
            meta["_same"] = (f"s.identity = {int(meta.get('identity') or 0)}"
                             if version == FORMAT_VERSION else "1")
            """The latest run's results, in SQL: those of its identity."""
            if "count" not in meta:
                raise CheckpointError(f"checkpoint {path!r} holds no run yet")
            yield conn, meta
    except sqlite3.Error as exc:
        if _files.has_wal(path) and not _files.writable_directory(path):
            raise CheckpointError(
                f"cannot read checkpoint {path!r} ({exc}): it holds writes not yet merged "
                "(its -wal file, left by a run that was killed) and its directory is "
                "read-only; copy the checkpoint with its -wal file to a writable directory, "
                "or run on it once where it can be written") from exc
        raise CheckpointError(f"cannot read checkpoint {path!r}: {exc}") from exc


def _read_only(path: str) -> sqlite3.Connection:
    """A read-only connection to our checkpoint at ``path`` (never blocking its writer).

    Where files can be made beside it, SQLite reads it in WAL mode as any reader (with the
    ``-shm`` it shares with a local writer). In a read-only directory or mount no writer
    can be at work and SQLite could not make the ``-shm``: the file is read as immutable
    (no locks, no ``-shm``), unless a killed run left writes in its ``-wal``. On a network
    filesystem the writing run keeps the file to itself (see :func:`_connect`): while one
    holds it, this says who, with what its lease knows, instead of reading.
    """
    if _files.on_network(path):
        _wait_for_close(path)  # this process's own run, closing in the background
        found = holder(path)
        if found is not None:
            raise CheckpointInUseError(
                f"checkpoint {path!r} cannot be read while it is written on a network "
                f"filesystem: {found.describe()}. Read it when that run ends (or set "
                "thread_chunks.config.checkpoint_filesystem = 'local' if this filesystem is "
                "local)", path=path, host=found.host, pid=found.pid, since=found.since,
                renewed=found.renewed, rows_done=found.rows_done)
        if _files.has_wal(path) and _files.writable_directory(path):
            _merge_wal(path)
        if not _files.has_wal(path):  # no writer, nothing in a -wal: no lock, no -shm
            return sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    if _files.writable_directory(path) or _files.has_wal(path):
        return _open_to_read(path)
    return sqlite3.connect(f"file:{path}?immutable=1", uri=True)


def _merge_wal(path: str) -> None:
    """Merge the writes a killed run left in the ``-wal`` of a checkpoint on a network
    filesystem into the file, as the next run would: holding the writer lock a moment, with
    no shared memory (SQLite's WAL index cannot be shared there, so a reader cannot read
    through the ``-wal`` as it does on a local disk). The content does not change."""
    lock = WriterLock.acquire(path)
    try:
        _close_quietly(_connect(path, create=False, network=True))
    finally:
        lock.release()


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
        with _reading(path) as (conn, meta):
            blob = conn.execute("SELECT value FROM meta WHERE key = 'parameters'").fetchone()[0]
            try:
                parameters = list(_unpickle(blob))
            except Exception as exc:  # a class or module they use is gone here
                raise CheckpointError(
                    f"checkpoint {os.fspath(path)!r}: the parameters cannot be unpickled here "
                    f"({type(exc).__name__}: {exc}); import what defined them, or run where "
                    "it is importable") from exc
            found = conn.execute(
                f"SELECT r.row, s.ok, s.value, s.started, s.ended, s.actor, {meta['_memory']} "
                f"FROM run AS r JOIN results AS s ON s.key = r.key AND {meta['_same']} "
                "ORDER BY r.row").fetchall()
            stored = conn.execute(f"SELECT count(*) FROM results AS s WHERE ok = 1 AND "
                                  f"{meta['_same']}").fetchone()[0]
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
        from ._table import to_pandas

        return to_pandas(self, func)


RATE_MIN_CALLS = 10
RATE_MIN_SECONDS = 2.0
"""``inspect`` gives a rate (and so an ETA) only over at least this many calls of the latest
run, spread over at least this long: fewer measure the start-up, not the rate."""
QUIET_SECONDS = 60.0
"""A run with no recorded end and no update for this long (or three times its longest call,
when longer) is shown as "no update since ...", without an ETA: a run killed (kill -9, a
lost machine) records no end, and the file cannot tell it from a run of long calls."""


def summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``thread-chunks inspect`` shows: the run's state, progress, failures, reuse,
    timing, rate and ETA.

    SQL over the run's row states and the timing columns, one scan of each table: no result is
    read or unpickled, so it costs the same for results of bytes or of gigabytes. The first
    and last update are the file's; the rate and the call memory count only calls that
    finished in the latest run (reused rows ran earlier), the rate only over enough of them
    (:data:`RATE_MIN_CALLS`, :data:`RATE_MIN_SECONDS`); the ETA only for a run that is on.
    ``state``: ``running``; ``finished`` (every row done or failed); ``stopped`` (it ended,
    Ctrl-C or an error, at ``run_ended``); ``quiet`` (no end recorded and no update for a while, see
    :data:`QUIET_SECONDS`: killed, or its calls are long); ``saved`` (written by
    ``Checkpoint(...)``, not run).
    """
    with _reading(path) as (conn, meta):
        since = float(meta.get("run_started") or 0.0)
        total = int(meta["count"])
        done, failed = conn.execute(
            "SELECT count(CASE WHEN ok = 1 THEN 1 END), count(CASE WHEN ok = 0 THEN 1 END) "
            "FROM run").fetchone()
        running = len(Running(meta.get(RUNNING_KEY)))
        stored, first, last, fresh, fresh_first, fresh_last, longest = conn.execute(
            "SELECT count(CASE WHEN ok = 1 THEN 1 END), min(started), max(ended), "
            "count(CASE WHEN ended >= ?1 AND started IS NOT NULL THEN 1 END), "
            "min(CASE WHEN ended >= ?1 THEN started END), "
            "max(CASE WHEN ended >= ?1 AND started IS NOT NULL THEN ended END), "
            "max(CASE WHEN ended >= ?1 THEN ended - started END) "
            f"FROM results AS s WHERE {meta['_same']}", (since,)).fetchone()
        median, largest = _call_memory(conn, meta["_memory"], meta["_same"], since)
        distinct = conn.execute("SELECT count(DISTINCT key) FROM run").fetchone()[0] if (
            stored < total) else None  # only then can the list repeat a call
        held = _identities(conn, meta) if "_same" in meta and meta.get(
            "format_version") == FORMAT_VERSION else []
    done = int(meta["done"]) if "done" in meta else int(done)
    span = (fresh_last - fresh_first) if fresh else 0.0
    rate = fresh / span if fresh >= RATE_MIN_CALLS and span >= RATE_MIN_SECONDS else None
    started, ended = meta.get("run_started"), meta.get("run_ended")
    latest = max((t for t in (last, started) if t is not None), default=None)
    if started is None:
        state = "saved"
    elif done + int(failed) >= total:  # every row has its final outcome
        state = "finished"
    elif ended is not None:
        state = "stopped"
    elif latest is not None and time.time() - latest > max(QUIET_SECONDS, 3 * (longest or 0)):
        state = "quiet"
    else:
        state = "running"
    eta = (total - done) / rate if rate and state == "running" else None
    return {"path": os.fspath(path), "function": meta["func_name"], "state": state,
            "run_started": started, "run_ended": ended, "done": done, "total": total,
            "running": int(running) if state in ("running", "quiet") else 0,
            "failed": int(failed), "first_update": first, "last_update": last,
            "rate_per_second": rate, "eta_seconds": eta, "rows_stored": int(stored),
            "rows_latest_run": total, "distinct_calls_latest_run": distinct,
            "reused_latest_run": int(meta.get("reused", 0)),
            "calls_latest_run": max(0, done + int(failed) - int(meta.get("reused", 0))),
            "call_memory_median": median, "call_memory_max": largest,
            "identities": [entry._asdict() for entry in held]}


class StoredIdentity(NamedTuple):
    """One identity a checkpoint holds results of (``thread-chunks inspect`` lists them)."""

    id: int
    function: str
    kind: str
    """"identified" (reused by a run with the same identity), "legacy" (from a file of an
    older format: never reused), "unidentifiable" (never reused) or "by hand"
    (``Checkpoint(...)``: adopted by the first run of ``function``)."""
    first_seen: float
    last_used: float
    results: int
    """Results held (successes and failures)."""
    latest: bool
    """Whether it is the latest run's."""
    parts: list[tuple[str, str]]
    """What it covers: (what, hex digest) pairs."""
    changed: str = ""
    """What changed since the identity of the same function used before it ("" for the
    first, or when that one cannot be compared: legacy, unidentifiable)."""


def _identities(conn: sqlite3.Connection, meta: Mapping[str, Any]) -> list[StoredIdentity]:
    """Every identity of the file, the latest run's first, then the most recently used."""
    latest = int(meta.get("identity") or 0)
    held = dict(conn.execute("SELECT identity, count(*) FROM results GROUP BY identity"))
    found = [StoredIdentity(id, name, kind, first, last, int(held.get(id, 0)), id == latest,
                            [(str(what), str(hexed)) for what, hexed in json.loads(parts)])
             for id, name, kind, first, last, parts in conn.execute(
                 "SELECT id, func_name, kind, first_seen, last_used, parts FROM identities")]
    found.sort(key=lambda entry: (not entry.latest, -entry.last_used, -entry.id))
    for i, entry in enumerate(found):
        older = next((e for e in found[i + 1:] if e.function == entry.function), None)
        if older is not None and _IDENTIFIED == entry.kind == older.kind:
            said = _changes(older.parts, entry.parts, entry.function)
            found[i] = entry._replace(changed=", ".join(said))
    return found


def identities(path: str | os.PathLike[str]) -> list[StoredIdentity]:
    """The identities whose results the checkpoint at ``path`` holds (the latest run's first,
    then the most recently used): what computed them, when, how many. A file of an older
    format (not yet opened by a run of this version) lists one legacy identity."""
    with _reading(path) as (conn, meta):
        if meta.get("format_version") == FORMAT_VERSION:
            return _identities(conn, meta)
        results = conn.execute("SELECT count(*) FROM results").fetchone()[0]
    return [StoredIdentity(0, str(meta.get("func_name")), _LEGACY, 0.0, 0.0, int(results),
                           True, [])]


def prune(path: str | os.PathLike[str], *, keep: int = 1, dry_run: bool = False
          ) -> list[StoredIdentity]:
    """Remove from the checkpoint at ``path`` the results of every identity but the ``keep``
    most recently used (the latest run's always among them), then shrink the file (SQLite's
    ``VACUUM``). Returns the identities removed (with ``dry_run``: that would be, and nothing
    is changed). A file of an older format is upgraded first (its results are one legacy
    identity). CheckpointError when the file is missing, not ours or cannot be written."""
    check = keep if isinstance(keep, int) and not isinstance(keep, bool) else 0
    if check < 1:
        raise ValueError(f"keep: expected a positive int, got {keep!r}")
    target = os.fspath(path)
    _wait_for_close(target)
    if not _is_ours(target):
        raise CheckpointError(f"no thread-chunks checkpoint at {target!r}")
    if dry_run:
        return identities(target)[keep:]
    conn, lock, _ = _open_for_writing(target)  # no run writes it meanwhile
    try:
        with closing(conn):
            with _transaction(conn):
                _upgrade(conn, target)
                _fold(conn)
                meta = _meta(conn, "identity")
                gone = _identities(conn, meta)[keep:]
                ids = [(entry.id,) for entry in gone]
                conn.executemany("DELETE FROM results WHERE identity = ?", ids)
                conn.executemany("DELETE FROM identities WHERE id = ?", ids)
            if gone:
                conn.execute("VACUUM")
    except sqlite3.Error as exc:
        raise CheckpointError(f"cannot prune checkpoint {target!r}: {exc}") from exc
    finally:
        lock.release()
    return gone


def _call_memory(conn: sqlite3.Connection, column: str, same: str, since: float
                 ) -> tuple[int | None, int | None]:
    """The median and the largest measured peak memory of the calls the latest run made
    (bytes; reused rows ran earlier): None when none was measured."""
    if column == "NULL":
        return None, None
    joined = (f"FROM run AS r JOIN results AS s ON s.key = r.key AND {same} "
              "WHERE s.memory IS NOT NULL AND s.ended >= ?")
    count, largest = conn.execute(f"SELECT count(*), max(s.memory) {joined}",
                                  (since,)).fetchone()
    if not count:
        return None, None
    median = conn.execute(f"SELECT s.memory {joined} ORDER BY s.memory LIMIT 1 OFFSET ?",
                          (since, (count - 1) // 2)).fetchone()[0]
    return int(median), int(largest)


def timeline(path: str | os.PathLike[str]) -> list[tuple[str, float, float, int, int | None]]:
    """(actor, start, end, row, peak memory) for every recorded call of the latest run: the
    data of a timeline plot (timing and memory columns only, no result is read)."""
    with _reading(path) as (conn, meta):
        return [(actor or "?", start, end, row, memory)
                for row, start, end, actor, memory in conn.execute(
                    f"SELECT r.row, s.started, s.ended, s.actor, {meta['_memory']} FROM run AS r "
                    f"JOIN results AS s ON s.key = r.key AND {meta['_same']} "
                    "WHERE s.started IS NOT NULL AND "
                    "s.ended IS NOT NULL ORDER BY r.row")]
