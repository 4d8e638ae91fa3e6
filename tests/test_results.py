"""Results that cannot travel fail only their row; results that cannot be stored fail only
their record; large arguments are described, not copied, in the checkpoint; the file's own
failures are CheckpointErrors; inspect reads no result."""

from __future__ import annotations

import json
import pickle
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import identity_workloads as iw
from tests import workloads as w
from tests.conftest import ROOT, local_env
from thread_chunks import (
    Checkpoint,
    CheckpointError,
    CheckpointFailedWarning,
    CheckpointRestartWarning,
    ResultError,
    _checkpoint,
    chunked,
    identities,
)
from thread_chunks._actor import Outcome
from thread_chunks._checkpoint import NotStored, _wait_for_close
from thread_chunks._chunker import _Merge
from thread_chunks._types import OnError

pytestmark = pytest.mark.usefixtures("ray_running")


def _lock_rows(n: int, directory: Path) -> list[list[Any]]:
    return [[i, 3, str(directory)] for i in range(n)]


def test_an_unpicklable_result_fails_only_its_row(tmp_path: Path) -> None:
    runs, ckpt = tmp_path / "runs", tmp_path / "run.ckpt"
    runs.mkdir()
    f = chunked(chunk_size=2, batch_size=8)(w.returns_lock)  # rows 0-7 in one call
    out = f.map(_lock_rows(12, runs), path=ckpt, on_error="return")
    assert [v for i, v in enumerate(out) if i != 3] == [i for i in range(12) if i != 3]
    error = out[3]
    assert isinstance(error, ResultError) and isinstance(error, TypeError)
    assert "row 3 of returns_lock returned a _thread.lock, which cannot be pickled" in str(
        error)
    view = Checkpoint.load(ckpt)
    assert view.completed == [i != 3 for i in range(12)]
    assert isinstance(view.failed[3], ResultError)
    assert w.executions(runs) == {i: 1 for i in range(12)}
    # raising: the same error, and the rest of its call is recorded all the same
    (tmp_path / "again").mkdir()
    with pytest.raises(ResultError, match="row 3 of returns_lock"):
        f.map(_lock_rows(8, tmp_path / "again"), path=tmp_path / "raise.ckpt")
    assert Checkpoint.load(tmp_path / "raise.ckpt").completed == [i != 3 for i in range(8)]
    f.close()


@pytest.mark.skipif(not hasattr(sqlite3.Connection, "setlimit"), reason="Python 3.11+")
def test_a_result_too_large_to_record_fails_only_its_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite's 1 GB, scaled
    monkeypatch.setattr("thread_chunks._checkpoint.connect.MAX_RECORD_BYTES", 1 << 20)
    ckpt = tmp_path / "run.ckpt"
    f = chunked(chunk_size=2)(w.sized)
    rows = [[i, 2, 2 << 20] for i in range(10)]
    with pytest.warns(CheckpointFailedWarning, match="row 2's result") as caught:
        out = f.map(rows, path=ckpt)
    assert out[2] == bytes(2 << 20) and out[5] == (5).to_bytes(4, "little")
    assert len(caught) == 1 and "no longer saved" not in str(caught[0].message)
    assert Checkpoint.load(ckpt).completed == [i != 2 for i in range(10)]
    with pytest.warns(CheckpointFailedWarning, match="row 2's result"):
        f.map(rows, path=ckpt)  # only the row not recorded runs again
    assert f.stats.calls == 1
    f.close()


def test_large_arguments_are_described_not_copied(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    blocks = [np.full(2**18, float(i)) for i in range(6)]  # 2 MiB each
    f = chunked(chunk_size=2)(w.checksum)
    rows: list[Any] = [[b, i] for i, b in enumerate(blocks)] + [{"block": blocks[0], "i": 9}]
    first = f.map(rows, path=ckpt)
    assert ckpt.stat().st_size < 2**20  # 14 MiB of arguments, none copied
    params = Checkpoint.load(ckpt).parameters
    assert isinstance(params[0][0], NotStored) and params[0][1] == 0
    assert "ndarray" in repr(params[0][0]) and "float64" in repr(params[0][0])
    assert "2.0 MiB" in params[0][0].description
    assert isinstance(params[6]["block"], NotStored) and params[6]["i"] == 9
    assert f.map(rows, path=ckpt) == first and f.stats.calls == 0  # matched by digest
    blocks[4][0] = -1.0  # an edited array is a different call
    f.map(rows, path=ckpt)
    assert f.stats.calls == 1
    f.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thread_chunks", *args], capture_output=True,
                          text=True, cwd=ROOT, env=local_env(), timeout=60)


def test_inspect_reads_no_result(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    f = chunked(chunk_size=2)(w.fail_on)
    f.map([[i] for i in range(10)], path=ckpt, on_error="return")
    with sqlite3.connect(ckpt) as conn:  # results nobody could unpickle, folded or not yet
        conn.execute("UPDATE results SET value = x'00'")
        conn.execute("UPDATE staged SET value = x'00'")
    info = json.loads(_cli("inspect", str(ckpt), "--json").stdout)
    assert (info["done"], info["total"], info["failed"], info["rows_stored"]) == (9, 10, 1, 9)
    assert info["state"] == "finished" and info["eta_seconds"] is None
    png = tmp_path / "t.png"
    assert _cli("inspect", str(ckpt), "--plot", str(png)).returncode == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    f.close()


def test_a_damaged_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    f = chunked(chunk_size=2)(w.square)
    f.map([[i] for i in range(2000)], path=ckpt)
    _wait_for_close(str(ckpt))  # the store's close has folded and written what it had
    with sqlite3.connect(ckpt) as conn:  # everything in the file itself, no WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = ckpt.stat().st_size
    with open(ckpt, "r+b") as handle:  # keep the first page (it is ours), damage the rest
        handle.seek(4096)
        handle.write(bytes(range(256)) * ((size - 4096) // 256))
    with pytest.raises(CheckpointError, match="run.ckpt"):
        f.map([[i] for i in range(2000)], path=ckpt)
    with pytest.raises(CheckpointError, match="run.ckpt"):
        Checkpoint.load(ckpt)
    result = _cli("inspect", str(ckpt))
    assert result.returncode == 2 and "run.ckpt" in result.stderr, result.stderr
    f.close()


def test_a_format_3_checkpoint_is_upgraded_and_none_of_it_reused(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    f = chunked(chunk_size=2)(w.square)
    rows = [[i] for i in range(50)]
    f.map(rows, path=ckpt)
    _wait_for_close(str(ckpt))  # format 3 stages nothing: the store's close folds it first
    iw.as_format(ckpt, 3)  # as format 3 kept the latest run's keys
    assert Checkpoint.load(ckpt).output == [i * i for i in range(50)]  # read as it is
    with pytest.warns(CheckpointRestartWarning, match="older thread-chunks"):
        assert f.map(rows, path=ckpt) == [i * i for i in range(50)]
    assert f.stats.calls == 50  # a legacy result is never reused (issue 26): kept, listed
    assert [e.kind for e in identities(ckpt)] == ["identified", "legacy"]
    with sqlite3.connect(ckpt) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'format_version'"
                            ).fetchone()[0] == _checkpoint.FORMAT_VERSION
    f.close()


def test_results_held_back_for_order_are_bounded_in_bytes(tmp_path: Path) -> None:
    """Row 0 waits for a gate while the other actor races on; with 1 MiB results and
    max_buffered_bytes=8 MiB, reading stops about 8 rows ahead, far below the row bound."""
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    marks.mkdir()
    f = chunked(chunk_size=2, max_buffered=1000, max_buffered_bytes=8 << 20)(w.head_field)
    counts = {"pulled": 0, "received": 0, "ahead": 0}

    def rows() -> Any:
        for i in range(200):
            counts["pulled"] += 1
            counts["ahead"] = max(counts["ahead"], counts["pulled"] - counts["received"])
            yield [i, str(gate), str(marks)]

    def open_gate() -> None:  # once the others have stopped (or after a minute)
        seen, still = -1, 0
        for _ in range(600):
            now = len(list(marks.iterdir()))
            still = still + 1 if now == seen else 0
            if still >= 10 or now > 100:
                break
            seen = now
            time.sleep(0.1)
        gate.touch()

    opener = threading.Thread(target=open_gate)
    opener.start()
    for i, value in enumerate(f.imap(rows())):
        counts["received"] += 1
        assert value[0] == i
    opener.join()
    assert counts["received"] == 200
    assert counts["ahead"] <= 16, counts  # 8 MiB of results, the calls in flight, row 0
    f.close()


class _Counted:
    """Counts how often it is unpickled."""

    loaded = 0

    def __reduce__(self) -> tuple[Any, ...]:
        return (_counted, ())


def _counted() -> _Counted:
    _Counted.loaded += 1
    return _Counted()


@pytest.mark.parametrize("reused", [False, True])
def test_a_part_of_results_is_unpickled_once_each_and_a_bad_one_named(reused: bool) -> None:
    """Results are handed out a part at a time, small parts unpickled at once: a result that
    cannot be unpickled here is a ResultError naming its row, in its place, and the results
    before it are not unpickled twice (unpickling may have effects)."""
    blobs = [pickle.dumps(_Counted()) for _ in range(5)]
    blobs[3] = b"not a pickle"
    part: list[Outcome] = [(i, True, b, 0.0, 0.0, "", None) for i, b in enumerate(blobs)]

    def merged(on_error: OnError) -> list[Any]:
        if reused:
            merge = _Merge(iter([(list(range(5)), blobs)]), True, on_error, "f")
            return [v for p in merge.all(iter([])) for v in p]
        return [v for p in _Merge(iter([]), True, on_error, "f").all(iter([part])) for v in p]

    _Counted.loaded = 0
    values = merged("return")
    assert [type(v) for v in values] == [_Counted] * 3 + [ResultError, _Counted]
    assert "row 3 of f: its result could not be unpickled here" in str(values[3])
    assert _Counted.loaded == 4
    with pytest.raises(ResultError, match="row 3 of f"):
        merged("raise")
