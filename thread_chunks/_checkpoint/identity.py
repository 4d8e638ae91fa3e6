"""What computed the results: the ``identities`` table's rows (one per identity of a function
a run of the file had), their kinds, how an identity is kept (:func:`_stored_digest`), and
what a user is told about them: why a run reuses nothing (:func:`_why_nothing`, the
:class:`~thread_chunks.CheckpointRestartWarning`'s words) and what each identity held is
(:class:`StoredIdentity`, listed by ``thread-chunks inspect``).

A run never deletes results: those of another identity stay, reused only by a run of that
identity again (see :func:`~thread_chunks._digest.identify` for what an identity covers).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .._digest import SCHEME, Identity, identify

_IDENTIFIED, _LEGACY, _UNIDENTIFIABLE, _BY_HAND = "identified", "legacy", "unidentifiable", \
    "by hand"
_KINDS = (_IDENTIFIED, _LEGACY, _UNIDENTIFIABLE, _BY_HAND)
"""identified: reused when a run has the same identity; legacy: results of a file of format 3
to 6 (identified more narrowly: never reused); unidentifiable: a run whose function could not
be encoded (a fresh identity, never matched); by hand: written by ``Checkpoint(...)``, adopted
by the first run of a function of that name."""


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


