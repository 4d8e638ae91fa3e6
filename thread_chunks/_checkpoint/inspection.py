"""What ``thread-chunks inspect`` and ``thread-chunks prune`` do with a checkpoint:
:func:`summary` (the run's state, progress, rate and ETA), :func:`timeline` (each call's
actor, start and end), :func:`identities` (what computed the results held) and :func:`prune`
(remove the results of identities no longer used).

Readers are SQL over keys, row states and timing columns: they unpickle nothing, so they
cost the same for results of bytes or of gigabytes. (Not named ``summary.py``: the package
re-exports the function :func:`summary`, which would hide a module of that name.)
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from typing import Any

from .._errors import CheckpointError
from .._inflight import META_KEY as RUNNING_KEY
from .._inflight import Running
from .connect import _is_ours, _open_for_writing, _reading_format, _wait_for_close
from .formats import Format, _upgrade
from .identity import _LEGACY, StoredIdentity, _identities
from .schema import _fold, _meta, _transaction

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
    with _reading_format(path) as (conn, meta, fmt):
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
            f"FROM results AS s WHERE {fmt.latest}", (since,)).fetchone()
        median, largest = _call_memory(conn, fmt, since)
        distinct = conn.execute("SELECT count(DISTINCT key) FROM run").fetchone()[0] if (
            stored < total) else None  # only then can the list repeat a call
        held = _identities(conn, meta) if fmt.identities else []
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


def identities(path: str | os.PathLike[str]) -> list[StoredIdentity]:
    """The identities whose results the checkpoint at ``path`` holds (the latest run's first,
    then the most recently used): what computed them, when, how many. A file of an older
    format (not yet opened by a run of this version) lists one legacy identity."""
    with _reading_format(path) as (conn, meta, fmt):
        if fmt.identities:
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


def _call_memory(conn: sqlite3.Connection, fmt: Format, since: float
                 ) -> tuple[int | None, int | None]:
    """The median and the largest measured peak memory of the calls the latest run made
    (bytes; reused rows ran earlier): None when none was measured."""
    if fmt.memory == "NULL":
        return None, None
    joined = (f"FROM run AS r JOIN results AS s ON s.key = r.key AND {fmt.latest} "
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
    with _reading_format(path) as (conn, _, fmt):
        return [(actor or "?", start, end, row, memory)
                for row, start, end, actor, memory in conn.execute(
                    f"SELECT r.row, s.started, s.ended, s.actor, {fmt.memory} FROM run AS r "
                    f"JOIN results AS s ON s.key = r.key AND {fmt.latest} "
                    "WHERE s.started IS NOT NULL AND "
                    "s.ended IS NOT NULL ORDER BY r.row")]
