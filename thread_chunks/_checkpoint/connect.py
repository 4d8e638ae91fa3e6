"""Opening and closing checkpoint files: whether a path holds one of ours (checked before
SQLite touches it), the writing connection a run holds with its writer lock (local and network
modes), the read-only connection readers share (:func:`_reading`), merging a killed run's
``-wal`` on a network filesystem, and closing a store in the background (its last fold) with
the means to wait for it.

Before SQLite touches the file, ``_files`` checks it is a regular file of ours (a new one is
made beside it and linked into place whole) and tells its filesystem; a run holds the writer
lock of ``_lock`` from open to close. On a network filesystem the file is written without the
WAL's shared memory (:func:`_connect`) and read only when no run holds it (:func:`_read_only`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

from .. import _files
from .._errors import CheckpointError, CheckpointInUseError
from .._inflight import META_KEY as RUNNING_KEY
from .._lock import WriterLock, holder
from .formats import Format, _read_as_current
from .schema import _SCHEMA, APPLICATION_ID, _fill, _fold, _transaction

BUSY_TIMEOUT_MS = 10_000
"""How long a save waits for a lock held by another process before it counts as failed."""
MAX_RECORD_BYTES = 1_000_000_000
"""The largest pickled result recorded (SQLite's own limit on a value and a row, 1 GB by
default): a larger one is returned but not recorded, with a warning."""

log = logging.getLogger("thread_chunks")


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


def _close_quietly(conn: sqlite3.Connection) -> None:
    """Close ``conn``; an error closing it (its work is committed or given up) is not one."""
    try:
        conn.close()
    except sqlite3.Error:
        pass


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
    """What a store does when it closes, in its background thread (see
    ``Store._stop_saving``); the writer lock goes last."""
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


def _close_in_background(path: str, conn: sqlite3.Connection, staged: int, ended: float | None,
                         lock: WriterLock | None) -> None:
    """Hand a store's connection (and its writer lock) to a thread that folds its ``staged``
    results and closes it (:func:`_fold_and_close`); :func:`_wait_for_close` waits for it."""
    closing_thread = threading.Thread(target=_fold_and_close, args=(conn, staged, ended, lock),
                                      name="thread-chunks checkpoint close")
    with _closing_lock:
        _closing[os.path.realpath(path)] = closing_thread
        closing_thread.start()


@contextmanager
def _reading(path: str | os.PathLike[str]) -> Iterator[tuple[sqlite3.Connection, dict[str, Any]]]:
    """A read-only connection to our checkpoint at ``path`` holding a run, and its meta (the
    parameter list left out). Every failure is a CheckpointError naming the file. A file of
    an older format, or with staged results, is read as the current format without being
    changed (:func:`~.formats._read_as_current`)."""
    with _reading_format(path) as (conn, meta, _):
        yield conn, meta


@contextmanager
def _reading_format(path: str | os.PathLike[str]
                    ) -> Iterator[tuple[sqlite3.Connection, dict[str, Any], Format]]:
    """:func:`_reading`, with the file's :class:`~.formats.Format` (what a reader's SQL says
    of the latest run's results and their memory)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path!r}")
    if not _is_ours(path):
        raise CheckpointError(f"{path!r} is empty, not a thread-chunks checkpoint")
    try:
        with closing(_read_only(path)) as conn:
            conn.execute("BEGIN")  # one snapshot for every read: a fold may commit meanwhile
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE key != 'parameters'"))
            found = _read_as_current(conn, meta, path)
            if "count" not in meta:
                raise CheckpointError(f"checkpoint {path!r} holds no run yet")
            yield conn, meta, found
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
