"""The run list: the latest run's rows as the ``run`` table keeps them (one key a row, and
the row's state: done, failed or not yet), written when a run starts (:func:`_write_run`),
read back for a rerun of the same list instead of computing the keys (:func:`_keys_of_list`),
joined with ``results`` to find what a run reuses (:func:`_find_reused`), updated a span of
rows at a time as results are recorded (:func:`_spans`), and re-keyed when a run adopts a
file written by ``Checkpoint(...)`` (:func:`_adopt`).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from array import array
from collections.abc import Sequence
from typing import Any

from .._actor import OK, ROW, Outcome, consecutive
from .._digest import KEY_BYTES, Binder, row_keys
from .._inflight import META_KEY as RUNNING_KEY
from .._rows import TypedRow
from .parameters import _pickle_rows
from .schema import _FIRST, _meta, _unpickle


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


