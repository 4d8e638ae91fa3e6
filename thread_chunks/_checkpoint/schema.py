"""The checkpoint file's shape: the application id that marks it ours, the format version,
the tables and what a new file holds, and the few operations on the tables every other part
uses (a transaction, reading ``meta``, folding staged results into ``results``).

Everything here is about the current format (7). Older formats are recognised and upgraded
in one place, :mod:`.formats`; opening and closing files is :mod:`.connect`'s.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from operator import itemgetter
from typing import Any

from .._actor import unpack

APPLICATION_ID = 0x54434B31  # "TCK1"
FORMAT_VERSION = 7
"""7: results kept per identity (``identities``; ``results.identity``): a changed function
deletes nothing; 6: small results staged before they are folded into ``results``; 5: each
result's measured peak memory (``results.memory``); 4: the latest run's keys in the ``run``
table (3 kept them in one ``meta`` blob). Files of formats 3 to 6 are upgraded when a run
opens them (their results go under a *legacy* identity, never reused: their identity was
narrower), and read as they are."""
_FOLD_CACHE_KIB = 64 << 10
"""SQLite's page cache while staged results are folded in (at most; the default is 2 MB):
the key index of ~2 million results."""
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
digest with the scheme (:func:`.identity._stored_digest`); ``parts`` a JSON list of ``[what, hex]``
pairs (what the warning compares); ``kind`` one of :data:`.identity._KINDS`."""
_SCHEMA = ("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
           + _RESULTS + _STAGED + _RUN + _IDENTITIES)
"""Every table, made when missing (a new file, or one of an older format being upgraded)."""

_FIRST, _SECOND = itemgetter(0), itemgetter(1)
"""The first and second column of a row SQLite returns, read in C."""


def _unpickle(blob: bytes | None) -> Any:
    """A stored value (a result, an exception, the parameter list) as it was pickled."""
    return None if blob is None else unpack(blob)


def _fill(fresh: str) -> None:
    """A new checkpoint's content (marked ours, the tables), written before it is put in
    place."""
    with closing(sqlite3.connect(fresh, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.executescript(_SCHEMA)


class _transaction:
    """``with _transaction(conn):`` one write transaction, committed unless the block raises."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _meta(conn: sqlite3.Connection, *keys: str) -> dict[str, Any]:
    marks = ", ".join("?" * len(keys))
    return dict(conn.execute(f"SELECT key, value FROM meta WHERE key IN ({marks})", keys))


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

