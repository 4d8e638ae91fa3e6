"""Checkpoints at scale (issue 19): small results staged and folded, keys in bulk, reused
results read by rowid. The store is driven directly (no actor needed) where the point is the
file; a real run where it is the run."""

from __future__ import annotations

import gc
import sqlite3
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import identity_workloads as iw
from tests import workloads as w
from thread_chunks import Checkpoint, CheckpointError, CheckpointRestartWarning, chunked
from thread_chunks._actor import Outcome, pack
from thread_chunks._checkpoint import FORMAT_VERSION, Store, _reading, _spans, summary, timeline
from thread_chunks._digest import Binder, row_keys
from thread_chunks._rows import Calls


def _open(path: Path, rows: list[list[Any]]) -> Store:
    return Store.open(path, w.square, "square", Calls.of(rows), rows)


def _outcome(row: int, value: object, ok: bool = True) -> Outcome:
    blob = pack(value) if ok else pack(ValueError(value))
    return (row, ok, blob if ok else ValueError(value), 1.0 + row, 2.0 + row, "a", None)


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _settle() -> None:
    for thread in threading.enumerate():
        if thread.name == "thread-chunks checkpoint close":
            thread.join()


def test_staged_results_are_read_before_and_after_the_fold(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    rows = [[i] for i in range(10)]
    store = _open(ckpt, rows)
    store.record([_outcome(i, i * i) for i in range(6)], "a")
    store.record([_outcome(6, "no", ok=False)], "a")
    assert _count(ckpt, "staged") == 7 and _count(ckpt, "results") == 0  # not folded yet

    def seen() -> tuple[Any, ...]:
        view = Checkpoint.load(ckpt)
        info = summary(ckpt)
        return (view.output, view.completed, str(view.failed[6]), view.stored,
                info["done"], info["failed"], info["rows_stored"], len(timeline(ckpt)))

    before = seen()
    assert before == ([0, 1, 4, 9, 16, 25, None, None, None, None], [True] * 6 + [False] * 4,
                      "no", 6, 6, 1, 6, 7)
    store.close()
    _settle()
    assert _count(ckpt, "staged") == 0 and _count(ckpt, "results") == 7
    assert seen() == before
    again = _open(ckpt, rows)  # every success reused, read by rowid
    assert list(again.reused) == list(range(6))
    assert [row for row, _ in again.read_reused()] == list(range(6))
    again.close()


def test_a_killed_runs_staged_results_are_folded_when_the_file_is_opened(
        tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    rows = [[i] for i in range(5)]
    store = _open(ckpt, rows)
    store.record([_outcome(i, i * i) for i in range(3)], "a")
    store._conn = None  # as a kill leaves it: nothing folded, nothing closed; what goes
    assert store._lock is not None  # with the killed process: its writer lock and its
    store._lock.release()  # SIGTERM handler (the next run takes the lock over by pid)
    store.close()
    again = _open(ckpt, rows)
    assert list(again.reused) == [0, 1, 2]
    assert _count(ckpt, "staged") == 0 and _count(ckpt, "results") == 3
    assert [(row, blob) for row, blob in again.read_reused()] == [
        (i, pack(i * i)) for i in range(3)]
    again.close()


@pytest.mark.parametrize("large_first", [True, False])
def test_the_latest_result_of_a_key_wins(tmp_path: Path, large_first: bool) -> None:
    """Rows 0 and 1 are the same call: a large success (written into results at once) and a
    small failure (staged), in either order; the one recorded last is what the file keeps,
    as when every result went into results."""
    ckpt = tmp_path / "run.ckpt"
    rows = [[3], [3]]
    big = np.zeros(1000)  # pickles to ~8 KB: not staged
    first, last = (_outcome(0, big), _outcome(1, "no", ok=False)) if large_first else (
        _outcome(0, "no", ok=False), _outcome(1, big))
    store = _open(ckpt, rows)
    store.record([first], "a")
    store.record([last], "a")
    while_open = Checkpoint.load(ckpt).completed[1]
    store.close()
    _settle()
    assert Checkpoint.load(ckpt).completed[1] is while_open is (not large_first)
    assert _count(ckpt, "results") == 1 and _count(ckpt, "staged") == 0


def test_a_reused_result_replaced_meanwhile_is_an_error_not_another_rows_value(
        tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    rows = [[i] for i in range(3)]
    store = _open(ckpt, rows)
    store.record([_outcome(i, i * i) for i in range(3)], "a")
    store.close()
    _settle()
    again = _open(ckpt, rows)
    with sqlite3.connect(ckpt) as conn:  # another process: row 2's result gone, its rowid
        top = conn.execute("SELECT max(rowid) FROM results").fetchone()[0]  # reused by
        conn.execute("DELETE FROM results WHERE rowid = ?", (top,))  # another key
        conn.execute("INSERT INTO results VALUES (x'00', 1, ?, 0, 0, 'b', 0, NULL, ?)",
                     (pack(-1), again.identity))  # of the same identity, another key
        assert conn.execute("SELECT max(rowid) FROM results").fetchone()[0] == top
    with pytest.raises(CheckpointError, match="lost the result"):
        list(again.read_reused())
    again.close()


def test_row_keys_in_bulk_are_the_keys_of_each_row() -> None:
    lock = threading.Lock()

    def f(x: object, y: object = 2, *, z: object = 3) -> None: ...

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((1,), {}), ((1, 2), {}), ((1,), {"y": 2}), ((), {"x": 1}), ((1, 2, 3), {}),
        ((np.arange(3),), {}), ((lock,), {}), ((lambda q: q,), {}), ((b"x" * 5000,), {}),
        (("s", 2.5, None, True, [1, (2,)], {"k": {1, 2}}), {}), ((1.0,), {}), ((1,), {}),
    ]
    for func in (f, w.square, None, len):
        binder = Binder(func)
        keyed = row_keys(binder, calls, large=4096)
        expected = [binder.key(args, kwargs) for args, kwargs in calls]
        assert keyed.undigestable == [6]
        assert [k for i, k in enumerate(keyed.keys) if i != 6] == [
            k for i, k in enumerate(expected) if i != 6]
        assert keyed.opaque == [5, 6, 7, 8]  # an array, a lock, a lambda, 5 KB of bytes
        assert keyed.keys[0] != keyed.keys[10] and keyed.keys[11] == keyed.keys[0]


def _scaled(x: int, k: int = 2) -> int:
    return x * k


_BY_THREE = types.FunctionType(_scaled.__code__, _scaled.__globals__, "_scaled", (3,))
"""``_scaled`` with another default: the same function to a checkpoint, but other keys."""


def test_the_same_list_again_reads_its_keys_back_and_any_other_computes_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun of the latest run's list (builtin data, the same function) takes the row keys
    from the file: no key is computed, also when a value shared in one is copied in the
    other. Another list, rows that are not builtin data, and a changed default (the same
    body: the same function to the checkpoint, but other keys) compute them."""
    computed: list[int] = []
    real = row_keys

    def counted(binder: Binder, calls: Any, large: int | None = None) -> Any:
        computed.append(len(calls))
        return real(binder, calls, large)

    monkeypatch.setattr("thread_chunks._checkpoint.store.row_keys", counted)
    ckpt = tmp_path / "run.ckpt"
    pair = [1, 2]

    def run(func: Any, rows: list[list[Any]], succeed: int) -> list[int]:
        store = Store.open(ckpt, func, "scaled", Calls.of(rows), rows)
        reused = list(store.reused)
        if min(succeed, len(rows)) > len(reused):
            store.record([_outcome(i, i) for i in range(min(succeed, len(rows)))
                          if i not in reused], "a")
        store.close()
        _settle()
        return reused

    shared: list[list[Any]] = [[i, pair] for i in range(6)]
    copied: list[list[Any]] = [[i, [1, 2]] for i in range(6)]
    assert run(_scaled, shared, 4) == [] and computed == [6]
    assert run(_scaled, shared, 6) == [0, 1, 2, 3] and computed == [6]  # read back
    assert run(_scaled, shared, 6) == list(range(6)) and computed == [6]
    assert run(_scaled, copied, 6) == list(range(6)) and computed == [6]
    assert Checkpoint.load(ckpt).parameters == copied
    assert run(_scaled, copied[:5], 6) == list(range(5)) and computed == [6, 5]
    odd = [[i, np.float32(1.5)] for i in range(6)]  # not builtin data: keys computed
    assert run(_scaled, odd, 2) == [] and run(_scaled, odd, 2) == [0, 1]
    assert computed == [6, 5, 6, 6]
    base = [[i] for i in range(6)]
    assert run(_scaled, base, 6) == [] and computed == [6, 5, 6, 6, 6]
    assert run(_BY_THREE, base, 0) == [] and len(computed) == 6  # k=3: none of k=2's
    assert run(_scaled, base, 0) == list(range(6)) and len(computed) == 7
    assert run(_scaled, base, 0) == list(range(6)) and len(computed) == 7


def test_a_run_table_rewritten_without_its_list_digest_is_not_read_back(
        tmp_path: Path) -> None:
    """A thread-chunks that knows no list digest (2.0.0.dev0 before it) rewrites the run
    table for its own list and leaves the digest of the list before: the keys read back
    must not be that other list's."""
    ckpt = tmp_path / "run.ckpt"
    first, other = [[i] for i in range(5)], [[i + 100] for i in range(5)]

    def run(rows: list[list[int]]) -> list[tuple[int, bytes]]:
        store = Store.open(ckpt, _scaled, "scaled", Calls.of(rows), rows)
        reused = list(store.reused)
        done = [_outcome(i, 2 * row[0]) for i, row in enumerate(rows) if i not in reused]
        if done:
            store.record(done, "a")
        out = list(store.read_reused())
        store.close()
        _settle()
        return out

    assert run(first) == []
    with sqlite3.connect(ckpt) as conn:
        (digest,) = conn.execute("SELECT value FROM meta WHERE key = 'list_key'").fetchone()
    assert run(other) == []
    with sqlite3.connect(ckpt) as conn:  # as the older version leaves it
        conn.execute("UPDATE meta SET value = ? WHERE key = 'list_key'", (digest,))
    assert run(first) == [(i, pack(2 * i)) for i in range(5)]  # first's, not other's


@pytest.mark.usefixtures("ray_running")
def test_a_format_5_checkpoint_is_upgraded_and_none_of_it_reused(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    f = chunked(chunk_size=2)(w.square)
    rows = [[i] for i in range(50)]
    f.map(rows, path=ckpt)
    _settle()
    iw.as_format(ckpt, 5)  # as format 5 wrote it: every result in results
    assert Checkpoint.load(ckpt).output == [i * i for i in range(50)]  # read as it is
    with pytest.warns(CheckpointRestartWarning, match="older thread-chunks"):
        assert f.map([*rows, [50]], path=ckpt) == [i * i for i in range(51)]
    assert f.stats.calls == 51  # a legacy result is never reused (issue 26)
    assert f.map([*rows, [50]], path=ckpt) == [i * i for i in range(51)]
    assert f.stats.calls == 0
    with sqlite3.connect(ckpt) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'format_version'"
                            ).fetchone()[0] == FORMAT_VERSION
    f.close()


@pytest.mark.usefixtures("ray_running")
def test_a_rerun_in_the_same_process_waits_for_the_fold(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    f = chunked(chunk_size=2)(w.square)
    rows = [[i] for i in range(3000)]
    f.map(rows, path=ckpt)
    start = time.perf_counter()
    assert f.map(rows, path=ckpt)[-1] == 2999 ** 2  # no lock error, whatever the fold's pace
    assert f.stats.calls == 0, (f.stats, time.perf_counter() - start)
    f.close()


def test_the_same_list_again_keeps_its_run_table_and_updates_only_changed_states(
        tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    rows = [[i] for i in range(5)]
    store = _open(ckpt, rows)
    store.record([_outcome(i, i * i) for i in range(3)] + [_outcome(3, "no", ok=False)], "a")
    store.close()
    _settle()
    with sqlite3.connect(ckpt) as conn:  # row 1's result gone (another process, say)
        conn.execute("DELETE FROM results WHERE value = ?", (pack(1),))
        before = conn.execute("SELECT rowid, row, key FROM run ORDER BY row").fetchall()
    again = _open(ckpt, rows)
    assert list(again.reused) == [0, 2]
    info = summary(ckpt)
    assert (info["done"], info["failed"], info["total"]) == (2, 1, 5)
    with sqlite3.connect(f"file:{ckpt}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT rowid, row, key FROM run ORDER BY row").fetchall() == before
        assert [ok for (ok,) in conn.execute("SELECT ok FROM run ORDER BY row")] == [
            1, None, 1, 0, None]
    again.close()
    other = _open(ckpt, rows[:4])  # another list: the run table is the new one
    assert summary(ckpt)["total"] == 4 and list(other.reused) == [0, 2]
    other.close()


def test_a_reader_keeps_one_snapshot_while_a_fold_commits(tmp_path: Path) -> None:
    """inspect or Checkpoint.load reading while a run's close folds its results: every
    query of the reader sees the file as it was when the reader began."""
    ckpt = tmp_path / "run.ckpt"
    store = _open(ckpt, [[i] for i in range(6)])
    store.record([_outcome(i, i * i) for i in range(6)], "a")
    with _reading(ckpt) as (conn, _):
        assert conn.execute("SELECT count(*) FROM main.staged").fetchone()[0] == 6
        store.close()  # folds in its thread, committed while the reader reads
        _settle()
        assert _count(ckpt, "staged") == 0
        assert conn.execute("SELECT count(*) FROM results WHERE ok = 1").fetchone()[0] == 6
        assert conn.execute("SELECT count(*) FROM run AS r JOIN results AS s "
                            "ON s.key = r.key").fetchone()[0] == 6


def test_run_states_are_written_per_span_of_rows() -> None:
    def o(row: int, ok: bool = True) -> Outcome:
        return (row, ok, b"", 0.0, 0.0, "", None)

    assert _spans([]) == []
    assert _spans([o(3), o(4), o(5)]) == [[1, 3, 5]]
    assert _spans([o(5), o(3), o(4)]) == [[1, 3, 5]]
    assert _spans([o(3), o(4, False), o(5)]) == [[1, 3, 3], [0, 4, 4], [1, 5, 5]]
    assert _spans([o(3), o(3, False)]) == [[0, 3, 3]]  # the latest outcome of a row counts
    assert _spans([o(1), o(7)]) == [[1, 1, 1], [1, 7, 7]]


def test_rows_and_outcomes_are_left_untracked_by_the_garbage_collector() -> None:
    """A run makes a row (item) and an outcome per row, and they live across several batches:
    if the collector tracked them they would reach its oldest generation, whose full passes
    visit every object the process holds. Exact tuples of plain values (a positional row's
    keyword arguments are None, not a dict) are untracked at its first passes; a row with
    keyword arguments holds a dict and stays tracked."""
    import pickle

    from thread_chunks._actor import read_reply
    from thread_chunks._rows import Rows

    rows = [[i, f"s{i}", 0.5] for i in range(50)]
    items = [*Calls.of(rows).source().take(25), *Calls.of(rows).source(range(30, 50)).take(9),
             *Rows(iter(rows)).take(10)]
    reply = pickle.dumps(([(i, True, pickle.dumps(i), 1.0, 2.0, "", 0) for i in range(40)],
                          True, 40, 0, 0.1, 0.1), protocol=5)
    outcomes = read_reply(reply).outcomes
    keyed = Calls.of([{"x": 1}, (1,)]).source().take(2)
    gc.collect()
    gc.collect()  # a tuple inside a tuple: the outer one is untracked a pass later
    assert [item[0] for item in items[25:34]] == list(range(30, 39))
    assert not any(map(gc.is_tracked, items)), [gc.is_tracked(i) for i in items]
    assert not any(map(gc.is_tracked, outcomes)) and len(outcomes) == 40
    assert [gc.is_tracked(item) for item in keyed] == [True, False]
    assert keyed[0][2] == {"x": 1} and keyed[1][2] is None


@pytest.mark.usefixtures("ray_running")
def test_a_list_half_reused_is_handed_out_in_order(tmp_path: Path) -> None:
    """Every other row reused from a checkpoint: reused and computed rows are handed out
    interleaved, in order, and only the others are computed."""
    n = 20_000
    f = chunked(chunk_size=2, batch_size=100, max_buffered=1_000,
                progress_bar=False)(w.square)
    path = tmp_path / "half.ckpt"
    assert f.map([[i] for i in range(0, n, 2)], path=path) == [i * i for i in range(0, n, 2)]
    _settle()
    assert list(f.imap([[i] for i in range(n)], path=path)) == [i * i for i in range(n)]
    assert f.stats.calls == n // 2
