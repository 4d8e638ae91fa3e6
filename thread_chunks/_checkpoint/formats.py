"""Files of older formats, in one place: which formats this version reads, how a run upgrades
one to the current format (:func:`_upgrade`, when it opens the file for writing), and how a
reader reads one as it is (:func:`_read_as_current`, without changing it).

What each format added (see :data:`.schema.FORMAT_VERSION`): 4 the ``run`` table (3 kept the
keys in one ``meta`` blob), 5 ``results.memory``, 6 ``staged``, 7 ``identities`` and
``results.identity``. Every other module reads and writes the current format only; a reader
learns what differs from the :class:`Format` it is given, never from ``meta``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from .._digest import KEY_BYTES
from .._errors import CheckpointError
from .identity import _BY_HAND, _LEGACY, _new_identity
from .schema import _RESULTS, FORMAT_VERSION, _fold, _meta, _renew_staged

_OLDEST = 3
"""The oldest format this version reads (and upgrades): 3 to :data:`FORMAT_VERSION`."""
_UPGRADED = tuple(range(_OLDEST, FORMAT_VERSION))
"""The formats a run upgrades to the current one when it opens the file."""


def _other_version(path: str, version: object) -> str:
    """What a file of a format this version does not read is told (as it is: not changed)."""
    return (f"checkpoint {path!r} was written by another version of thread-chunks (format "
            f"{version}, this version reads formats {_OLDEST} to {FORMAT_VERSION})")


def _split(blob: bytes) -> list[bytes]:
    return [blob[i:i + KEY_BYTES] for i in range(0, len(blob), KEY_BYTES)]


def _format_3_run(meta: Mapping[str, Any]) -> Iterator[tuple[int, bytes]]:
    """``(row, key)`` of the latest run of a file of format 3 (its keys in ``meta``'s
    ``keys`` blob, one after the other)."""
    return enumerate(_split(meta.get("keys", b"")))


def _has_memory(conn: sqlite3.Connection) -> bool:
    """Whether the results table has the memory column (format 5)."""
    return any(column[1] == "memory" for column in conn.execute("PRAGMA table_info(results)"))


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
    if version not in _UPGRADED:
        raise CheckpointError(_other_version(path, version)
                              + "; it is left as it is: choose another path, or run that version")
    if version == 3:
        conn.execute("DELETE FROM run")
        conn.executemany("INSERT INTO run (row, key) VALUES (?, ?)", _format_3_run(meta))
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


class Format(NamedTuple):
    """A file's format as a reader meets it (see :func:`_read_as_current`): the two places
    where the readers' SQL differs between formats, and whether the file lists identities."""

    version: int
    memory: str
    """The measured peak memory of a result ``s``, in SQL: ``s.memory``, or ``NULL`` in a
    file of format 3 or 4 (not measured then)."""
    latest: str
    """Whether a result ``s`` is one of the latest run's, in SQL: of its identity (format 7);
    any result before (a file held the results of one function)."""
    identities: bool
    """Whether the file has the ``identities`` table (format 7)."""


def _read_as_current(conn: sqlite3.Connection, meta: Mapping[str, Any], path: str) -> Format:
    """Let a reader read a file of any format this version reads as the current one, inside
    its read transaction and without changing the file: format 3's keys become a temporary
    ``run`` table, staged results a temporary view over ``results`` (:func:`_staged_view`).
    ``meta``: the file's. A format it does not read is a CheckpointError."""
    version = meta.get("format_version")
    if version == 3:
        conn.execute("CREATE TEMP TABLE run (row INTEGER PRIMARY KEY, key BLOB, "
                     "ok INTEGER)")
        conn.executemany("INSERT INTO temp.run (row, key) VALUES (?, ?)", _format_3_run(meta))
        conn.execute("UPDATE temp.run SET ok = (SELECT s.ok FROM results AS s "
                     "WHERE s.key = temp.run.key)")
    elif version in (6, FORMAT_VERSION):
        if conn.execute("SELECT 1 FROM staged LIMIT 1").fetchone() is not None:
            unique = "identity, key" if version == FORMAT_VERSION else "key"
            for statement in _staged_view(unique):  # not executescript: it commits
                conn.execute(statement)
    elif version not in (4, 5):
        raise CheckpointError(_other_version(path, version))
    current = version == FORMAT_VERSION
    return Format(int(version), "s.memory" if _has_memory(conn) else "NULL",
                  f"s.identity = {int(meta.get('identity') or 0)}" if current else "1", current)


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
