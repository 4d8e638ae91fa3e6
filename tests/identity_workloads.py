"""Functions, callables and an actor class for the identity tests (importable: the actors
find them by reference)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from tests.rowkey_workloads import executions as executions
from tests.rowkey_workloads import mark as mark
from thread_chunks import LabelledActor
from thread_chunks._checkpoint import _wait_for_close


def identity(x: int, directory: str) -> int:
    mark(directory, x)
    return x


class Model:
    """A callable object whose state (``k``) changes what it returns."""

    def __init__(self, k: int, directory: str) -> None:
        self.k = k
        self.directory = directory

    def __call__(self, x: int) -> int:
        mark(self.directory, f"{self.k}x{x}")
        return self.k * x


class Times10(LabelledActor):
    """An actor class that changes what runs: every result times 10."""

    def run(self, label: Any, /, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        label, value = super().run(label, *args, **kwargs)
        return label, value * 10


def scaled(x: int, directory: str, data: str) -> int:
    """Reads a data file the library cannot see (its number scales ``x``)."""
    mark(directory, x)
    return x * int(Path(data).read_text())


def value_of(ref: Any, directory: str) -> int:
    """The value behind an ObjectRef row, plus one."""
    import ray

    value = ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref
    mark(directory, value)
    return int(value) + 1


def add_ref(ref: Any, x: int, directory: str) -> int:
    """``x`` plus the value behind ``ref``: ``partial(add_ref, ray.put(10))`` is a function
    whose identity cannot be known (what the reference points to may change)."""
    import ray

    mark(directory, x)
    return x + int(ray.get(ref))


def scaled_twice(x: int, directory: str) -> int:
    mark(directory, x)
    return 2 * x


class Scaler:
    """``Scaler(2).apply`` and ``Scaler(3).apply``: two functions."""

    def __init__(self, k: int) -> None:
        self.k = k

    def apply(self, x: int) -> int:
        return self.k * x


def as_format(path: Path, version: int) -> None:
    """Rewrite a checkpoint of this version as thread-chunks of format ``version`` (3 to 6)
    wrote it: results keyed by row alone, no identities, the function's body digest."""
    _wait_for_close(str(path))
    with closing(sqlite3.connect(path)) as conn, conn:
        (identity,) = conn.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        memory = ", memory INTEGER" if version >= 5 else ""
        conn.execute("ALTER TABLE results RENAME TO newer")
        conn.execute(f"CREATE TABLE results (key BLOB PRIMARY KEY, ok INTEGER NOT NULL, "
                     f"value BLOB, started REAL, ended REAL, actor TEXT, recorded REAL NOT "
                     f"NULL{memory})")
        columns = "key, ok, value, started, ended, actor, recorded" + (
            ", memory" if memory else "")
        conn.execute(f"INSERT INTO results SELECT {columns} FROM newer WHERE identity = ?",
                     (identity,))
        for table in ("newer", "identities", "staged"):
            conn.execute(f"DROP TABLE {table}")
        if version == 6:
            conn.execute("CREATE TABLE staged AS SELECT * FROM results WHERE 0")
        if version == 3:
            keys = b"".join(k for (k,) in conn.execute("SELECT key FROM run ORDER BY row"))
            conn.execute("INSERT INTO meta VALUES ('keys', ?)", (keys,))
            conn.execute("DROP TABLE run")
        conn.execute("DELETE FROM meta WHERE key IN ('identity', 'list_key')")
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                         [("format_version", version), ("func_digest", "0" * 64)])
