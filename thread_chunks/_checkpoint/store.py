"""The :class:`Store` a run writes through: it opens the file for one run (upgrading an
older format, finding what the run reuses), records results as they arrive (small ones
staged, folded in when it closes), notes the rows in flight, and reads the reused results
back a few MB at a time as they are handed out.

A run opens the file, computes every row's key, and finds in SQL (``run`` joined with
``results`` of its identity) the rows recorded as a success; it sends only the others, and
reads the reused results back in row order, a few MB at a time, as they are handed out
(:meth:`Store.reused_chunks`). Each batch of results is one small transaction (O(1) work per
result), so a kill -9 at any instant leaves a consistent file that lost at most the calls that
were in flight. Small results go to ``staged`` rather than straight into ``results``: keys are
digests, so every result recorded into the key index lands on a random page of it, and once the
index outgrows a batch each commit rewrites a page per row (4 KB of write-ahead log a row,
~30 us at 200,000 rows); appended to ``staged`` a row costs its own bytes, and one fold per run
writes each page of the index once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import struct
import time
from array import array
from collections.abc import Callable, Collection, Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any

from .. import _signals
from .._actor import (
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
    weight,
)
from .._digest import KEY_BYTES, SCHEME, Binder, Identity, list_key, row_keys
from .._errors import (
    CheckpointError,
    CheckpointFailedWarning,
    CheckpointInUseError,
    CheckpointRestartWarning,
    warn_user,
)
from .._inflight import META_KEY as RUNNING_KEY
from .._inflight import InFlight
from .._lock import WriterLock
from .._wire import SHARE_AT_BYTES
from .connect import (
    MAX_RECORD_BYTES,
    _close_in_background,
    _close_quietly,
    _is_ours,
    _open_for_writing,
    _wait_for_close,
)
from .formats import _upgrade
from .identity import (
    _IDENTIFIED,
    _UNIDENTIFIABLE,
    _identify,
    _new_identity,
    _stored_digest,
    _why_nothing,
)
from .parameters import _signature_blob
from .runlist import (
    _adopt,
    _begin_run,
    _find_reused,
    _keys_digest,
    _keys_of_list,
    _spans,
    _write_run,
)
from .schema import (
    _FIRST,
    _SECOND,
    FORMAT_VERSION,
    _fold,
    _meta,
    _renew_staged,
    _transaction,
)

_STAGE_MAX_BYTES = 4096
"""Results pickled to at most this many bytes are staged (appended, folded in later); a larger
one is written into ``results`` at once: its index entry costs little beside its bytes, and a
fold would copy them."""
_REUSED_CHUNK_BYTES = 8 << 20
_REUSED_CHUNK_ROWS = 500
"""Reused results are read back this many bytes (or rows) at a time, at most (one larger
result is read alone)."""

log = logging.getLogger("thread_chunks")

_ROW, _OK, _VALUE, _STARTED, _ENDED, _MEMORY = map(itemgetter, (ROW, OK, VALUE, STARTED, ENDED,
                                                               MEMORY))
"""An :data:`Outcome`'s fields, read in C."""
_BYTES = frozenset({bytes})

_FUNCTION_META = ("format_version", "scheme", "func_name", "identity", "by_hand")
"""What ``meta`` says of the latest run's function, read when a run opens the file."""


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
            _close_in_background(self.path, self._conn, self._staged, ended, self._lock)
            self._conn = None


def _pack_failure(error: object) -> bytes:
    try:
        return pack(error)
    except Exception:
        return pack(RuntimeError(f"{type(error).__name__}: {error} (could not be pickled)"))


def _insert_results(conn: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    """Record ``rows`` (each a value for every column, in order) into ``results`` (the
    latest of a key replacing the one before) or ``staged`` (appended)."""
    if rows:
        verb = "INSERT OR REPLACE" if table == "results" else "INSERT"
        conn.executemany(f"{verb} INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
