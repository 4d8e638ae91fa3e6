"""Crash-safe, row-keyed checkpoints: one SQLite row per finished call, keyed by what the
call was, not where it stood in the list.

The file is an SQLite database in WAL mode, marked as ours by ``PRAGMA application_id``:

- ``identities``: what computed the results: one row per identity of a function (its code
  and all it reaches, ``actor_cls``, ``depends_on``: see
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

One job a module, each layer using only those above it (no cycles):

- ``schema``: the tables, the format version, the application id, a new file's content.
- ``identity``: the ``identities`` rows, and what a user is told about them.
- ``formats``: files of formats 3 to 6: recognised, read as they are, upgraded (one place).
- ``connect``: opening a file to read or to write (local and network modes), merging a killed
  run's ``-wal``, closing a store in the background.
- ``parameters``: the latest run's parameter list and signature as the file keeps them.
- ``runlist``: the ``run`` table: row keys, reuse lookup, row states, adopting rows by hand.
- ``store``: :class:`Store`, what a run writes through and reads its reused results from.
- ``legacy``: :class:`Checkpoint`, the 1.0.5 view, and checkpoints written by hand.
- ``inspection``: ``summary``, ``timeline``, ``identities``, ``prune`` (the command line's).

Results are pickled: load checkpoints only from a trusted source. This package's names are
re-exported here for the rest of thread-chunks (and its tests); a test that replaces a
module-level value patches the module that reads it (``connect.BUSY_TIMEOUT_MS``).
"""

from __future__ import annotations

from .connect import _is_ours, _reading, _wait_for_close
from .identity import StoredIdentity
from .inspection import RATE_MIN_CALLS, RATE_MIN_SECONDS, identities, prune, summary, timeline
from .legacy import Checkpoint
from .parameters import NotStored
from .runlist import _as_call, _spans
from .schema import FORMAT_VERSION, _unpickle
from .store import Store

for _moved in (Checkpoint, NotStored, StoredIdentity):
    # named by where they were defined before this package: a NotStored pickled into a
    # file's parameters (and any of these a user pickled) reads the same in any version
    _moved.__module__ = __name__
del _moved

__all__ = [
    "FORMAT_VERSION",
    "RATE_MIN_CALLS",
    "RATE_MIN_SECONDS",
    "Checkpoint",
    "NotStored",
    "Store",
    "StoredIdentity",
    "_as_call",
    "_is_ours",
    "_reading",
    "_spans",
    "_unpickle",
    "_wait_for_close",
    "identities",
    "prune",
    "summary",
    "timeline",
]
