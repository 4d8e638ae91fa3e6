"""Row-keyed checkpoints: a finished row is never computed twice.

Every test counts the calls that really ran (marker files written by the function) on real
Ray and real files.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import ray

from tests import rowkey_workloads as rk
from tests import workloads as w
from tests.conftest import (
    ROOT,
    no_restart,
    until_killed_drivers_calls_end,
    wait_until_recorded,
)
from thread_chunks import Checkpoint, CheckpointRestartWarning, Chunker, chunk, chunked
from thread_chunks._digest import Binder, function_digest, value_key

pytestmark = pytest.mark.usefixtures("ray_running")


# -- identity: signature binding, defaults, docstrings -----------------------------------------


def test_positional_and_keyword_rows_are_the_same_call(tmp_path: Path) -> None:
    runs, ckpt = tmp_path / "runs", tmp_path / "run.ckpt"
    runs.mkdir()
    assert chunk(w.count_and_square, [[i, str(runs)] for i in range(4)], chunk_size=2,
                 path=ckpt) == [0, 1, 4, 9]
    as_dicts = [{"directory": str(runs), "x": i} for i in range(5)]
    assert chunk(w.count_and_square, as_dicts, chunk_size=2, path=ckpt) == [0, 1, 4, 9, 16]
    assert w.executions(runs) == {i: 1 for i in range(5)}


def test_a_changed_default_is_a_different_call(tmp_path: Path) -> None:
    runs, ckpt = tmp_path / "runs", tmp_path / "run.ckpt"
    runs.mkdir()

    def scaled(x: int, directory: str, k: int = 1) -> int:
        rk.mark(directory, f"{x}*{k}")
        return x * k

    assert chunk(scaled, [[1, str(runs)], [2, str(runs)]], chunk_size=2, path=ckpt) == [1, 2]

    def scaled(x: int, directory: str, k: int = 2) -> int:  # type: ignore[no-redef]
        rk.mark(directory, f"{x}*{k}")
        return x * k

    with no_restart():  # same body: no warning, but every row is another call
        assert chunk(scaled, [[1, str(runs)], [2, str(runs)]], chunk_size=2,
                     path=ckpt) == [2, 4]
    # an explicit k=1 is the call recorded first
    assert chunk(scaled, [[1, str(runs), 1]], chunk_size=2, path=ckpt) == [1]
    assert rk.executions(runs) == {"1*1": 1, "2*1": 1, "1*2": 1, "2*2": 1}


def test_a_docstring_edit_keeps_the_results(tmp_path: Path) -> None:
    runs, ckpt = tmp_path / "runs", tmp_path / "run.ckpt"
    runs.mkdir()

    def step(x: int, directory: str) -> int:
        """Add one."""
        rk.mark(directory, x)
        return x + 1

    assert chunk(step, [[1, str(runs)], [2, str(runs)]], chunk_size=1, path=ckpt) == [2, 3]

    def step(x: int, directory: str) -> int:  # type: ignore[no-redef]
        """Add one to x: documented better, does the same."""
        rk.mark(directory, x)
        return x + 1

    with no_restart():
        assert chunk(step, [[1, str(runs)], [2, str(runs)]], chunk_size=1,
                     path=ckpt) == [2, 3]
    assert rk.executions(runs) == {"1": 1, "2": 1}

    def step(x: int, directory: str) -> int:  # type: ignore[no-redef]
        """Add one."""
        rk.mark(directory, x)
        return x + 2

    with pytest.warns(CheckpointRestartWarning, match="the body of 'step' changed"):
        assert chunk(step, [[1, str(runs)]], chunk_size=1, path=ckpt) == [3]
    assert rk.executions(runs) == {"1": 2, "2": 1}


# -- digests ----------------------------------------------------------------------------------


def test_equal_arrays_built_apart_match_and_another_dtype_does_not(tmp_path: Path) -> None:
    runs, ckpt = tmp_path / "runs", tmp_path / "run.ckpt"
    runs.mkdir()
    first = [[np.arange(1000, dtype=np.float64) * i, str(runs)] for i in range(3)]
    assert chunk(rk.total, first, chunk_size=2, path=ckpt) == [0.0, 499500.0, 999000.0]
    rebuilt = [[np.linspace(0, 999, 1000) * i, str(runs)] for i in range(3)]  # equal values
    other_dtype = [[np.arange(1000, dtype=np.float32), str(runs)]]
    strided = [[np.arange(2000, dtype=np.float64)[::2], str(runs)]]  # = first[2]
    assert chunk(rk.total, rebuilt + other_dtype + strided, chunk_size=2,
                 path=ckpt) == [0.0, 499500.0, 999000.0, 499500.0, 999000.0]
    assert rk.executions(runs) == {"float64:0.0": 1, "float64:499500.0": 1,
                                   "float64:999000.0": 1, "float32:499500.0": 1}


def test_object_refs_are_computed_in_every_run(tmp_path: Path) -> None:
    """A row holding an ObjectRef has no identity (what a ref names can change: Ray reuses
    ids across sessions): it runs again in every run, the same list included (issue 26: no
    key by position)."""
    runs, ckpt = tmp_path / "runs", tmp_path / "run.ckpt"
    runs.mkdir()
    ref = ray.put(np.full(10, 7.0))
    rows: list[list[object]] = [[np.full(10, 1.0), str(runs)], [ref, str(runs)]]
    assert chunk(rk.total, rows, chunk_size=2, path=ckpt) == [10.0, 70.0]
    assert chunk(rk.total, rows, chunk_size=2, path=ckpt) == [10.0, 70.0]  # the same list
    assert rk.executions(runs) == {"float64:10.0": 1, "float64:70.0": 2}
    longer = [*rows, [np.full(10, 2.0), str(runs)]]  # another list: the ref row runs again
    assert chunk(rk.total, longer, chunk_size=2, path=ckpt) == [10.0, 70.0, 20.0]
    assert rk.executions(runs) == {"float64:10.0": 1, "float64:70.0": 3, "float64:20.0": 1}
    assert "not recorded" in str(Checkpoint.load(ckpt).parameters[1])


def test_digests_are_the_same_in_another_process_whatever_the_hash_seed() -> None:
    code = """
import functools, sys, numpy as np
from thread_chunks._digest import Binder, function_digest, value_key
from tests import workloads as w
def kind(x):
    return "vowel" if x in {"a", "e", "i", "o", "u"} else "other"
values = [1, 1.5, "text", b"raw", None, True, (1, "a"), {"k": [1, 2.5]}, np.arange(6.0),
          np.arange(6).reshape(2, 3).T, frozenset({1, 2}), w.square, functools.partial(w.add, y=1)]
print([value_key(v).hex() for v in values], function_digest(kind),
      Binder(w.add).key((1,), {}).hex())
"""
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        outputs.add(proc.stdout)
    assert len(outputs) == 1


def test_different_values_never_share_a_digest() -> None:
    def factory(k: int) -> object:
        return lambda x: x * k

    pairs: list[tuple[object, object]] = [
        (1, 1.0), (1, True), (0.0, -0.0), ("1", b"1"), ([1, 2], (1, 2)), ({"a": 1}, {"a": 2}),
        (np.arange(4), np.arange(4).astype(np.int32)), (np.zeros((2, 2)), np.zeros(4)),
        (np.ma.masked_array([1, 2], [False, True]), np.ma.masked_array([1, 2], [False, False])),
        (memoryview(b"abc"), memoryview(b"abd")), (factory(1), factory(2)),
        (lambda x, k=1: x * k, lambda x, k=2: x * k), (w.square, w.negate),
    ]
    for a, b in pairs:
        assert value_key(a) is not None and value_key(b) is not None, (a, b)
        assert value_key(a) != value_key(b), (a, b)


def test_what_cannot_be_encoded_has_no_digest() -> None:
    cyclic: list[object] = []
    cyclic.append(cyclic)
    for value in (threading.Lock(), (i for i in range(3)), cyclic, ray.put(1)):
        assert value_key(value) is None, value


def test_function_identity_rules() -> None:
    def f(x: int) -> int:
        return x + 1

    plain = f

    def f(x: int) -> int:  # type: ignore[no-redef]
        """A docstring is not behaviour."""
        return x + 1

    def h(x: int) -> str:
        return "a"

    def h2(x: int) -> str:
        return "b"

    assert function_digest(plain) == function_digest(f)  # the name is part of the identity
    assert function_digest(h) != function_digest(h2)  # a constant is not a docstring
    assert function_digest(chunked(w.square)) == function_digest(w.square)
    bind = Binder(w.add)
    assert bind.key((3,), {}) == bind.key((), {"x": 3}) == bind.key((3, 0), {})
    assert bind.key((3, 1), {}) != bind.key((3,), {})
    assert Binder(max).key((1, 2), {}) is not None  # no signature: keyed as given


# -- reuse in a run ----------------------------------------------------------------------------


def test_ordered_and_unordered_interleave_known_and_new_rows(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runs, ckpt = tmp_path / "runs", tmp_path / "run.ckpt"
    runs.mkdir()
    rows = [[i, str(runs)] for i in range(12)]
    chunker = Chunker(w.count_and_square, chunk_size=2)
    assert chunker(rows[::3], path=ckpt) == [0, 9, 36, 81]
    with caplog.at_level(logging.INFO, logger="thread_chunks"):
        assert chunker(rows, path=ckpt) == [i * i for i in range(12)]
    assert "reused 4 of 12 rows" in caplog.text
    assert chunker.stats.calls == 8
    assert w.executions(runs) == {i: 1 for i in range(12)}
    more = [[i, str(runs)] for i in range(16)]
    assert sorted(chunker.imap(more, path=ckpt, ordered=False)) == sorted(
        i * i for i in range(16))
    assert chunker.stats.calls == 4 and w.executions(runs) == {i: 1 for i in range(16)}
    view = Checkpoint.load(ckpt)
    assert view.reused == 12 and view.stored == 16 and view.done == 16


def test_failed_rows_run_again_and_finished_ones_do_not(tmp_path: Path) -> None:
    runs, ckpt, flag = tmp_path / "runs", tmp_path / "run.ckpt", tmp_path / "flag"
    runs.mkdir()
    rows = [[i, str(runs), str(flag)] for i in range(5)]
    out = chunk(rk.fail_unless, rows, chunk_size=2, path=ckpt, on_error="return")
    assert isinstance(out[3], ValueError) and out[:3] + out[4:] == [0, 1, 2, 4]
    assert isinstance(Checkpoint.load(ckpt).failed[3], ValueError)
    flag.touch()
    assert chunk(rk.fail_unless, rows, chunk_size=2, path=ckpt) == [0, 1, 2, 3, 4]
    assert rk.executions(runs) == {"0": 1, "1": 1, "2": 1, "3": 2, "4": 1}


def test_kill_9_then_an_extended_run_computes_exactly_what_was_not_recorded(
        tmp_path: Path) -> None:
    runs, ckpt = tmp_path / "runs", tmp_path / "run.ckpt"
    runs.mkdir()
    script = f"""
import sys
import thread_chunks
from tests import workloads as w
n = int(sys.argv[1])
rows = [[i, {str(runs)!r}, 0.2] for i in range(n)]
out = thread_chunks.chunk(w.slow_count, rows, chunk_size=2, path={str(ckpt)!r},
                          progress_bar=False, batch_size=1)
assert out == [i * i for i in range(n)], out
print("complete")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, "-c", script, "30"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_recorded(driver, ckpt, 6)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    until_killed_drivers_calls_end(runs)  # a call it had sent may still start meanwhile
    recorded = Checkpoint.load(ckpt)
    done_before = {i for i, c in enumerate(recorded.completed) if c}
    assert len(done_before) >= 6
    ran_before = w.executions(runs)

    rerun = subprocess.run([sys.executable, "-c", script, "40"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and rerun.stdout == "complete\n", rerun.stderr
    counts = w.executions(runs)
    assert set(counts) == set(range(40))
    for i in range(40):  # recorded rows never ran again; every other row ran once more
        assert counts[i] == ran_before.get(i, 0) + (i not in done_before), i
    view = Checkpoint.load(ckpt)
    assert view.completed == [True] * 40 and view.reused == len(done_before)


# -- the 1.0.5 view and the inspect command ------------------------------------------------------


def test_checkpoint_index_and_done_round_trip_until_a_run_records(tmp_path: Path) -> None:
    ckpt = tmp_path / "hand.ckpt"
    Checkpoint("square", [[1], [2], [3]], [None] * 3, [False] * 3, 2, 0, ckpt)
    view = Checkpoint.load(ckpt)
    assert (view.index, view.done) == (2, 0)
    assert chunk(w.square, [[1], [2], [3]], chunk_size=2, path=ckpt) == [1, 4, 9]
    view = Checkpoint.load(ckpt)
    assert (view.index, view.done, view.completed) == (3, 3, [True] * 3)


def test_inspect_shows_stored_latest_and_reused_rows(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    chunk(w.square, [[i] for i in range(6)], chunk_size=2, path=ckpt)
    chunk(w.square, [[i] for i in range(4, 9)], chunk_size=2, path=ckpt)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    info = json.loads(subprocess.run(
        [sys.executable, "-m", "thread_chunks", "inspect", str(ckpt), "--json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=True).stdout)
    assert (info["rows_stored"], info["rows_latest_run"], info["reused_latest_run"]) == (9, 5, 2)
    assert (info["done"], info["total"], info["eta_seconds"]) == (5, 5, None)
    text = subprocess.run([sys.executable, "-m", "thread_chunks", "inspect", str(ckpt)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
                          check=True).stdout
    assert "rows stored:  9" in text
    assert "latest run:   5 rows, 2 reused" in text
