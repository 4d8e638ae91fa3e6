"""Crash-safe checkpoints: resume, reuse by row, start afresh for another function, foreign
files, failures, the inspect command."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import warnings
from contextlib import closing
from itertools import chain
from pathlib import Path

import pytest
import ray

from tests import workloads as w
from tests.conftest import ROOT, wait_until_recorded
from thread_chunks import (
    Checkpoint,
    CheckpointError,
    CheckpointFailedWarning,
    CheckpointRestartWarning,
    Chunker,
    _checkpoint,
    chunk,
    chunked,
)

pytestmark = pytest.mark.usefixtures("ray_running")


def _rows(n: int, directory: Path) -> list[list[object]]:
    return [[i, str(directory)] for i in range(n)]


def test_a_finished_run_is_recorded_and_a_rerun_does_nothing_again(tmp_path: Path) -> None:
    runs, ckpt = tmp_path / "runs", tmp_path / "run.ckpt"
    runs.mkdir()
    assert chunk(w.count_and_square, _rows(20, runs), chunk_size=2, path=ckpt) == [
        i * i for i in range(20)]
    view = Checkpoint.load(ckpt)
    assert view.func_name == "count_and_square"
    assert view.parameters == _rows(20, runs)
    assert view.output == [i * i for i in range(20)]
    assert view.completed == [True] * 20
    assert view.index == view.done == 20
    assert view.path == str(ckpt)
    assert all(view.started[i] is not None and view.actor[i] for i in range(20))
    assert chunk(w.count_and_square, _rows(20, runs), chunk_size=2, path=ckpt) == [
        i * i for i in range(20)]
    assert w.executions(runs) == {i: 1 for i in range(20)}


def test_the_checkpoint_file_is_private(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    chunk(w.square, [[1]], chunk_size=1, path=ckpt)
    assert stat.S_IMODE(os.stat(ckpt).st_mode) == 0o600


def test_resume_after_kill_9_of_the_driver(tmp_path: Path) -> None:
    runs, ckpt = tmp_path / "runs", tmp_path / "run.ckpt"
    runs.mkdir()
    script = f"""
import thread_chunks
from tests import workloads as w
rows = [[i, {str(runs)!r}, 0.2] for i in range(30)]
out = thread_chunks.chunk(w.slow_count, rows, chunk_size=2, path={str(ckpt)!r},
                          progress_bar=False, batch_size=1)
assert out == [i * i for i in range(30)], out
print("complete")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_recorded(driver, ckpt, 6)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    recorded = Checkpoint.load(ckpt)  # consistent after kill -9
    done_before = {i for i, c in enumerate(recorded.completed) if c}
    assert len(done_before) >= 6
    assert all(recorded.output[i] == i * i for i in done_before)

    rerun = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and rerun.stdout == "complete\n", rerun.stderr
    counts = w.executions(runs)
    assert set(counts) == set(range(30))
    assert all(counts[i] == 1 for i in done_before)  # recorded calls never ran again
    assert sum(counts.values()) - 30 <= 2  # lost at most the calls in flight (chunk_size)
    assert Checkpoint.load(ckpt).completed == [True] * 30


@pytest.mark.parametrize("ordered", [True, False])
def test_every_result_handed_out_is_already_in_the_file(tmp_path: Path, ordered: bool) -> None:
    """A result is handed out only once it is committed, so a crash right after the
    consumer saw it cannot lose it: tiny calls in batches and one row at a time, read from
    another connection, as a new process would."""
    batched, alone = chunked(chunk_size=2)(w.square), chunked(chunk_size=2, batch_size=1)(w.square)
    for f, rows in ((batched, [[i] for i in range(20_000)]), (alone, [[i] for i in range(40)])):
        ckpt = tmp_path / f"{len(rows)}.ckpt"
        with f:  # its actors closed however the test ends
            results = f.imap(rows, path=ckpt, ordered=ordered)
            seen = [next(results)]  # the file exists from now on
            with closing(sqlite3.connect(f"file:{ckpt}?mode=ro", uri=True)) as reader:
                for value in chain(seen[:1], results):
                    row = math.isqrt(value)
                    (ok,) = reader.execute("SELECT ok FROM run WHERE row = ?", (row,)
                                           ).fetchone()
                    assert ok == 1, f"row {row} was handed out before it was saved"
                    if row % 97 == 0:  # its result too (staged has no index: a sample)
                        (found,) = reader.execute(
                            "SELECT count(*) FROM (SELECT key FROM staged UNION ALL "
                            "SELECT key FROM results) WHERE key = "
                            "(SELECT key FROM run WHERE row = ?)", (row,)).fetchone()
                        assert found == 1, f"row {row}'s result was not in the file"
                    seen.append(value)
        assert sorted(seen[1:]) == [i * i for i in range(len(rows))]
        assert Checkpoint.load(ckpt).completed == [True] * len(rows)


def _reuse(tmp_path: Path, first: list[list[object]], second: list[list[object]],
           func2: object = None) -> tuple[list[object], dict[int, int]]:
    """Run ``first`` then ``second`` on one checkpoint; what ran is counted by marker files."""
    runs, ckpt = tmp_path / "runs", tmp_path / "run.ckpt"
    runs.mkdir(exist_ok=True)
    chunk(w.count_and_square, first, chunk_size=2, path=ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointRestartWarning)
        out = chunk(func2 or w.count_and_square, second, chunk_size=2, path=ckpt)  # type: ignore[arg-type]
    assert Checkpoint.load(ckpt).parameters == second
    return out, w.executions(runs)


def test_more_rows_run_only_the_new_ones(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    out, counts = _reuse(tmp_path, _rows(4, runs), _rows(6, runs))
    assert out == [i * i for i in range(6)]
    assert counts == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1}


def test_fewer_rows_run_nothing_and_the_others_stay_in_the_file(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    out, counts = _reuse(tmp_path, _rows(4, runs), _rows(3, runs))
    assert out == [0, 1, 4] and counts == {0: 1, 1: 1, 2: 1, 3: 1}
    again, counts = _reuse(tmp_path, _rows(3, runs), _rows(4, runs))  # back to 4: row 3 kept
    assert again == [0, 1, 4, 9] and counts == {0: 1, 1: 1, 2: 1, 3: 1}
    assert Checkpoint.load(tmp_path / "run.ckpt").completed == [True] * 4


def test_reordered_rows_run_nothing(tmp_path: Path) -> None:
    rows = _rows(5, tmp_path / "runs")
    out, counts = _reuse(tmp_path, rows, rows[::-1])
    assert out == [16, 9, 4, 1, 0]
    assert counts == {i: 1 for i in range(5)}


def test_an_edited_value_runs_only_that_row(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    edited = _rows(4, runs)
    edited[2] = [12, str(runs)]
    out, counts = _reuse(tmp_path, _rows(4, runs), edited)
    assert out == [0, 1, 144, 9]
    assert counts == {0: 1, 1: 1, 2: 1, 3: 1, 12: 1}


def test_a_different_function_starts_afresh_and_keeps_the_older_results(tmp_path: Path) -> None:
    runs, ckpt = tmp_path / "runs", tmp_path / "run.ckpt"
    runs.mkdir()
    chunk(w.count_and_square, _rows(3, runs), chunk_size=2, path=ckpt)
    with pytest.warns(CheckpointRestartWarning,
                      match="changed from 'count_and_square' to 'slow_count'"):
        chunk(w.slow_count, _rows(3, runs), chunk_size=2, path=ckpt)
    assert w.executions(runs) == {i: 2 for i in range(3)}
    assert Checkpoint.load(ckpt).stored == 3  # the latest function's
    held = _checkpoint.identities(ckpt)  # the older function's are kept (issue 26)
    assert [(e.function, e.results) for e in held] == [("slow_count", 3),
                                                       ("count_and_square", 3)]


def test_a_changed_body_starts_afresh(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"

    def step(x: int) -> int:
        return x + 1

    first = step
    assert chunk(first, [[1], [2]], chunk_size=1, path=ckpt) == [2, 3]

    def step(x: int) -> int:  # type: ignore[no-redef]  # the user fixed a bug
        return x + 100

    with pytest.warns(CheckpointRestartWarning, match="the body of 'step' changed"):
        assert chunk(step, [[1], [2]], chunk_size=1, path=ckpt) == [101, 102]


def test_same_body_elsewhere_resumes_without_warning(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    runs = tmp_path / "runs"
    runs.mkdir()
    chunk(w.count_and_square, _rows(3, runs), chunk_size=1, path=ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chunk(w.count_and_square, _rows(3, runs), chunk_size=2, path=ckpt)
    assert w.executions(runs) == {0: 1, 1: 1, 2: 1}


def test_checkpoint_constructed_by_hand_is_resumed(tmp_path: Path) -> None:
    runs, ckpt = tmp_path / "runs", tmp_path / "hand.ckpt"
    runs.mkdir()
    params = _rows(4, runs)
    Checkpoint("count_and_square", params, [0, None, 4, None], [True, False, True, False],
               3, 2, str(ckpt))
    view = Checkpoint.load(ckpt)
    assert (view.func_name, view.parameters, view.output, view.completed, view.done) == (
        "count_and_square", params, [0, None, 4, None], [True, False, True, False], 2)
    out = list(Chunker(w.count_and_square, chunk_size=2).imap(params, path=ckpt))
    assert out == [0, 1, 4, 9]
    assert w.executions(runs) == {1: 1, 3: 1}


@pytest.mark.parametrize("content", [
    b"my precious notes\n",
    bytes(range(256)) * 8,
    b"SQLite format 3\x00" + b"\x00" * 200,
])
def test_a_file_that_is_not_ours_is_left_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "precious.dat"
    path.write_bytes(content)
    before = os.stat(path)
    with pytest.raises(CheckpointError, match="precious.dat"):
        chunk(w.square, [[1]], chunk_size=1, path=path)
    assert path.read_bytes() == content
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.dat"]


def test_another_programs_database_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (42)")
    content = path.read_bytes()
    with pytest.raises(CheckpointError, match="another program"):
        chunk(w.square, [[1]], chunk_size=1, path=path)
    with pytest.raises(CheckpointError, match="another program"):
        Checkpoint("square", [[1]], [1], [True], 1, 1, path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_an_unwritable_path_fails_before_any_call(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    for bad in (tmp_path / "missing-dir" / "run.ckpt", tmp_path):
        with pytest.raises(CheckpointError, match="checkpoint"):
            chunk(w.count_and_square, _rows(3, runs), chunk_size=1, path=bad)
    assert list(runs.iterdir()) == []


def test_a_save_failing_mid_run_warns_once_and_the_run_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("thread_chunks._checkpoint.connect.BUSY_TIMEOUT_MS", 50)
    ckpt = tmp_path / "run.ckpt"
    rows = [[i, str(ckpt), 5] for i in range(20)]
    with pytest.warns(CheckpointFailedWarning, match="no longer saved") as caught:
        out = chunk(w.lock_checkpoint, rows, chunk_size=2, path=ckpt, batch_size=1)
    assert out == list(range(20))
    assert sum(issubclass(r.category, CheckpointFailedWarning) for r in caught) == 1
    assert 0 < Checkpoint.load(ckpt).done < 20


def test_chunker_and_decorator_paths(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    a, b, c = tmp_path / "a.ckpt", tmp_path / "b.ckpt", tmp_path / "c.ckpt"
    chunker = Chunker(w.count_and_square, chunk_size=2, path=a)
    assert chunker(_rows(3, runs)) == [0, 1, 4]
    assert chunker(_rows(3, runs)) == [0, 1, 4]  # resumed from a: nothing ran
    assert chunker(_rows(3, runs), path=b) == [0, 1, 4]  # a new file: ran again
    f = chunked(chunk_size=2)(w.count_and_square)
    assert f.map(_rows(3, runs), path=c) == [0, 1, 4]
    assert f.map(_rows(3, runs), path=c) == [0, 1, 4]
    assert list(f.imap(_rows(3, runs), path=c, ordered=False)) == [0, 1, 4]
    assert w.executions(runs) == {0: 3, 1: 3, 2: 3}
    assert Checkpoint.load(c).done == 3


def test_a_generator_is_materialised_and_recorded(tmp_path: Path) -> None:
    ckpt = tmp_path / "gen.ckpt"
    assert chunk(w.add, ({"x": i, "y": 1} for i in range(5)), chunk_size=2, path=ckpt) == [
        1, 2, 3, 4, 5]
    assert Checkpoint.load(ckpt).parameters == [{"x": i, "y": 1} for i in range(5)]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "thread_chunks", *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=60)


def test_inspect_text_and_json(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    Checkpoint("simulate", [[1], [2], [3], [4]], [1, None, None, None],
               [True, False, False, False], 1, 1, ckpt)
    chunk(w.square, [[i] for i in range(6)], chunk_size=2, path=tmp_path / "done.ckpt")
    text = _cli("inspect", str(ckpt))
    assert text.returncode == 0, text.stderr
    assert "function:     simulate" in text.stdout
    assert "done:         1 / 4" in text.stdout
    info = json.loads(_cli("inspect", str(tmp_path / "done.ckpt"), "--json").stdout)
    assert info["function"] == "square"
    assert (info["done"], info["total"], info["failed"]) == (6, 6, 0)
    assert info["last_update"] >= info["first_update"] > 0
    assert info["eta_seconds"] is None and info["state"] == "finished"  # no ETA: not on


def test_inspect_errors_are_clear(tmp_path: Path) -> None:
    missing = _cli("inspect", str(tmp_path / "nope.ckpt"))
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr
    foreign = tmp_path / "notes.txt"
    foreign.write_text("hello")
    result = _cli("inspect", str(foreign))
    assert result.returncode == 2 and "not a thread-chunks checkpoint" in result.stderr
    assert foreign.read_text() == "hello"


def test_inspect_plots_a_timeline(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    chunk(w.interval, [[i, 0.01] for i in range(8)], chunk_size=2, path=ckpt)
    png = tmp_path / "timeline.png"
    result = _cli("inspect", str(ckpt), "--plot", str(png))
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
