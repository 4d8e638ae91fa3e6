"""Learned memory: every call's peak measured in its worker, reported (outcome, stats,
checkpoint, inspect), and calls admitted only while their expected peaks fit the node's
budget. What ran at once is read from marker files the calls leave, never timed."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from tests import identity_workloads as iw
from tests import workloads as w
from tests.conftest import ROOT, local_env, why_it_failed
from thread_chunks import (
    Checkpoint,
    CheckpointRestartWarning,
    RemoteLabelledActor,
    WorkerDiedError,
    chunked,
)
from thread_chunks._actor import OK, VALUE, NodeMemory, _marker, read_reply, unpack
from thread_chunks._checkpoint import FORMAT_VERSION, _wait_for_close, summary
from thread_chunks._engine.ray_adapter import killed_at as _killed_at

pytestmark = pytest.mark.usefixtures("ray_running")

MiB = 2**20
CALL_MB = 600
BUDGET = 1600 * MiB  # two calls of 600 MB fit, three do not
LOW, HIGH = int(0.95 * CALL_MB * MiB), (CALL_MB + 100) * MiB  # a sane measure of one call


def _rows(n: int, directory: Path, megabytes: int = CALL_MB, seconds: float = 0.8,
          start: int = 0) -> list[list[Any]]:
    directory.mkdir(exist_ok=True)
    return [[start + i, megabytes, seconds, str(directory)] for i in range(n)]


def test_calls_are_admitted_by_their_measured_peak_and_it_is_reported(tmp_path: Path) -> None:
    f = chunked(chunk_size=4, batch_size=1, memory_budget=BUDGET)(w.mark_memory)
    marks, path = tmp_path / "marks", tmp_path / "run.ckpt"
    assert f.map(_rows(7, marks), path=path) == list(range(7))

    spans = w.spans(marks)
    first_end = min(end for _, end in spans)
    # nothing known: one call first, alone until it ends (or, on a slow machine, until the
    # learning window ends: then by what it used so far, 600 MB), then as many as fit
    assert w.most_at_once(spans) <= 2
    assert w.most_at_once(spans, after=first_end) == 2  # 2 x 600 MB fit in 1600 MiB
    peak = f.stats.peak_call_memory
    assert peak is not None and LOW <= peak < HIGH, peak

    view = Checkpoint.load(path)
    assert all(m is not None and LOW <= m < HIGH
               for m in view.memory), view.memory
    shown = subprocess.run([sys.executable, "-m", "thread_chunks", "inspect", str(path),
                            "--json"], capture_output=True, text=True, cwd=ROOT, check=True)
    info = json.loads(shown.stdout)
    assert LOW <= info["call_memory_median"] <= info["call_memory_max"] == max(
        view.memory)  # type: ignore[type-var]

    # learned: the next run on this pool starts two at once, with no call alone first
    again = tmp_path / "again"
    assert f.map(_rows(4, again, start=10)) == list(range(10, 14))
    spans = w.spans(again)
    assert w.most_at_once(spans) == 2


def test_what_was_learned_is_carried_to_a_new_process_by_the_checkpoint(
        tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    first = chunked(chunk_size=4, batch_size=1, memory_budget=BUDGET)(w.mark_memory)
    assert first.map(_rows(2, tmp_path / "first"), path=path) == [0, 1]
    # a fresh pool (as in a new process) knows nothing, except from the checkpoint
    fresh = chunked(chunk_size=4, batch_size=1, memory_budget=BUDGET)(w.mark_memory)
    marks = tmp_path / "fresh"
    assert fresh.map(_rows(4, marks, start=10), path=path) == list(range(10, 14))
    assert w.most_at_once(w.spans(marks)) == 2  # two at once from the start


def test_concurrent_sweeps_share_one_budget(tmp_path: Path) -> None:
    f = chunked(chunk_size=4, batch_size=1, memory_budget=BUDGET)(w.mark_memory)
    marks = tmp_path / "marks"
    results: dict[str, list[int]] = {}
    threads = [threading.Thread(target=lambda name=name, start=start: results.update(
        {name: f.map(_rows(4, marks, start=start))})) for name, start in (("a", 0), ("b", 10))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == {"a": [0, 1, 2, 3], "b": [10, 11, 12, 13]}
    spans = w.spans(marks)
    first_end = min(end for _, end in spans)
    assert w.most_at_once(spans, after=first_end) == 2  # both runs' calls counted together


def test_a_format_4_checkpoint_without_memory_is_read_and_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    f = chunked(chunk_size=2)(w.square)
    rows = [[i] for i in range(20)]
    f.map(rows, path=path)
    _wait_for_close(str(path))  # the store folds its staged results as it closes
    iw.as_format(path, 4)  # as format 4 wrote it: no memory column, no staging
    view = Checkpoint.load(path)
    assert view.output == [i * i for i in range(20)] and view.memory == [None] * 20
    info = summary(path)
    assert info["call_memory_median"] is None and info["call_memory_max"] is None
    with pytest.warns(CheckpointRestartWarning, match="older thread-chunks"):
        assert f.map([*rows, [20]], path=path) == [i * i for i in range(21)]  # upgraded
    assert f.stats.calls == 21  # a legacy result is never reused (issue 26)
    view = Checkpoint.load(path)
    assert None not in view.memory
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'format_version'"
                            ).fetchone()[0] == FORMAT_VERSION == 7
    f.close()


def test_a_long_first_call_runs_alone_only_for_the_learning_window(tmp_path: Path) -> None:
    """Nothing known of the function's memory: the first call on the node runs alone, but
    only for a while, not its whole length. Here it waits until the others have run: were
    they kept waiting for it to end, it would fail after 120 s. (One of the four others may
    be queued behind it: short calls are, one per actor.)"""
    f = chunked(chunk_size=2, batch_size=1, progress_bar=False)(w.first_waits_for_the_others)
    assert f.map([[i, str(tmp_path), 3] for i in range(5)]) == list(range(5))
    assert f.stats.failures == 0
    f.close()


def test_memory_budget_none_admits_by_chunk_size_only(tmp_path: Path) -> None:
    f = chunked(chunk_size=3, batch_size=1, memory_budget=None)(w.mark_memory)
    marks = tmp_path / "marks"
    assert f.map(_rows(3, marks, megabytes=50, seconds=1.5)) == [0, 1, 2]
    assert w.most_at_once(w.spans(marks)) == 3
    assert f.stats.peak_call_memory is not None  # still measured


def test_bad_memory_budget_is_refused_naming_it() -> None:
    for bad in (0, -1, 1.5, "lots", True):
        with pytest.raises(ValueError, match="memory_budget: expected a positive number"):
            chunked(memory_budget=bad)(w.square)  # type: ignore[arg-type]


def test_the_kill_message_tells_what_the_worker_used() -> None:
    message = ("Task was killed due to the node running out of memory. ... (actor ID: ab, "
               "name=LabelledActor.__init__, pid=4242, actual memory used=1.52GB, worker "
               "ID=cd) ...")
    assert _killed_at(message) == int(1.52e9)
    assert _killed_at("(Worker's Lease ID: x | Memory used: 2.5 GiB)") == int(2.5 * 2**30)
    assert _killed_at("the worker died") == 0
    listed = ("Considered workers: [\nSelected to kill: (Actor(0b): task name=A.__init__, "
              "pid=6943, actual memory used=3.39GB, worker ID=5f)\n]\nTotal non-selected "
              "idle workers USS bytes: 0.04GB\nTop 10 memory users: ...")
    assert _killed_at(listed) == int(3.39e9)
    two = ("Ray killed 2 worker(s)\nSelected to kill: (Actor(da): pid=10397, actual memory "
           "used=0.04GB, worker ID=b3)\nSelected to kill: (Actor(98): pid=10334, actual "
           "memory used=2.96GB, worker ID=08)\n(Actor(3f): pid=10272, actual memory used=0.04GB")
    assert _killed_at(two, 10334) == int(2.96e9)  # each killed worker finds its own line
    assert _killed_at(two, 10397) == int(0.04e9)
    assert _killed_at(two, 1) == int(0.04e9)  # not listed: the first selected


def test_a_worker_waits_for_a_killed_workers_process_to_be_gone() -> None:
    """Ray reports a worker it killed for memory once it has disconnected, while the kernel
    may still be freeing its memory (a zombie): nothing starts on the node until an idle
    actor there has seen the process gone. Here a process of the test's own stands in."""
    actor = RemoteLabelledActor.remote(None)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        ref = actor._tc_settle.remote([holder.pid])
        ready, _ = ray.wait([ref], timeout=1.5)
        assert not ready  # the process lives
        holder.kill()
        ready, _ = ray.wait([ref], timeout=1.5)
        assert not ready  # a zombie until it is reaped
        holder.wait()
        reading = ray.get(ref, timeout=60)
        assert isinstance(reading, NodeMemory) and 0 < reading.used < reading.total
    finally:
        holder.kill()
        holder.wait()
        ray.kill(actor)


def test_a_first_call_reads_as_started_only_once_its_worker_runs_it(tmp_path: Path) -> None:
    """A worker Ray has not handed its call yet sleeps at its idle footprint, as a call
    holding still would: the first call on a node marks its start (once its arguments are
    fetched), and its memory is read as still only from then on. A marker left by a worker
    that died is cleared; what is not a marker is left alone."""
    runner = RemoteLabelledActor.remote(w.wait_for)
    reader = RemoteLabelledActor.remote(None)
    mark, gone = uuid.uuid4().hex, uuid.uuid4().hex
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = Path(_marker(gone, int(dead.stdout)))
    stale.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    stale.touch()
    other = stale.parent / f"notes.{dead.stdout.strip()}"
    other.touch()
    try:
        pid = ray.get(runner._tc_identity.remote())[1]
        assert ray.get(reader._tc_usage.remote(pid, mark))[3] is False  # not sent yet
        gate = tmp_path / "gate"
        reply = runner._tc_run_batch.remote([(7, (7, str(gate)), {})], (), mark=mark)
        deadline = time.monotonic() + 120  # until it runs (on a loaded machine: a while)
        while not ray.get(reader._tc_usage.remote(pid, mark))[3]:
            assert time.monotonic() < deadline, "the marked call never read as started"
            time.sleep(0.01)
        assert Path(_marker(mark, pid)).exists() and not stale.exists() and other.exists()
        gate.touch()
        (outcome,), *_ = read_reply(ray.get(reply))
        assert outcome[OK] and unpack(outcome[VALUE]) == 7
        assert ray.get(reader._tc_usage.remote(pid, mark))[3] is False  # ended: cleared
        assert not Path(_marker(mark, pid)).exists()
        unmarked = runner._tc_run_batch.remote([(8, (8, str(gate)), {})])
        assert read_reply(ray.get(unmarked))[0][0][OK]
        assert not list(stale.parent.glob(f"*.{pid}"))  # only a marked call leaves a marker
    finally:
        ray.kill(runner)
        ray.kill(reader)
        other.unlink(missing_ok=True)


DRIVER = """
import sys, warnings
from tests import workloads as w
import thread_chunks
from thread_chunks import ConcurrencyReducedWarning, chunked
thread_chunks.config.ray_config = {"num_cpus": 2, "include_dashboard": False}
for megabytes in map(int, sys.argv[1:]):
    f = chunked(chunk_size=6, batch_size=1, progress_bar=False)(w.hold_memory)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = f.map([[i, megabytes, 1.0] for i in range(6)])
    shrunk = sum(c.category is ConcurrencyReducedWarning and "lack of memory" in str(c.message)
                 for c in caught)  # (not a notice of actors slow to be placed)
    print("RESULT", megabytes, out == list(range(6)), f.stats.worker_deaths,
          f.stats.peak_call_memory // 2**20, f.stats.peak_concurrency, shrunk)
"""


def test_six_large_calls_at_once_never_meet_rays_memory_monitor() -> None:
    """Ray's monitor at 40 % of this machine, as in the issue (or 5 GiB above the memory in
    use, when more is in use: the suite's idle actors hold a few GB by now): 6 calls of
    1.5 GB and of 2.5 GB with chunk_size=6, the budget read off the node (the default)."""
    memory = psutil.virtual_memory()
    threshold = max(0.4, (memory.total - memory.available + 5 * 2**30) / memory.total)
    env = {**local_env(), "RAY_memory_usage_threshold": f"{threshold:.4f}",
           "RAY_memory_monitor_refresh_ms": "100"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, "1500", "2500"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, why_it_failed(proc.stderr)
    lines = [x.split()[1:] for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert len(lines) == 2, proc.stdout
    for megabytes, right, deaths, peak, at_once, shrunk in lines:
        assert right == "True" and deaths == "0" and shrunk == "0", (lines, proc.stderr[-2000:])
        assert 0.95 * int(megabytes) <= int(peak) < int(megabytes) + 100, lines
        assert 1 <= int(at_once) < 6, lines  # admitted by memory, not all six


OUTLIER_DRIVER = """
import sys
from tests import workloads as w
import thread_chunks
from thread_chunks import WorkerDiedError, chunked
thread_chunks.config.ray_config = {"num_cpus": 2, "include_dashboard": False}
small, outlier, impossible = map(int, sys.argv[1:])
f = chunked(chunk_size=4, batch_size=1, progress_bar=False)(w.hold_memory)
assert f.map([[i, small, 0.5] for i in range(4)]) == list(range(4))  # learned: small
rows = [[i, small, 3.0] for i in range(6)]
rows[2] = [2, outlier, 3.0]  # far above the others: its node runs out with them beside it
out = f.map(rows)
print("OUTLIER", out == list(range(6)), f.stats.worker_deaths, f.stats.failures)
out = f.map([[0, small, 0.5], [1, impossible, 3.0], [2, small, 0.5]], on_error="return")
error = out[1]
print("IMPOSSIBLE", out[0] == 0 and out[2] == 2, type(error).__name__, f.stats.failures)
print(error)
"""


def test_a_row_far_above_the_others_runs_again_alone_and_one_too_large_fails_clearly(
) -> None:
    """Ray's monitor 5 GiB above the memory in use before the driver's Ray starts (which
    itself takes 1.3-2 GiB of it): rows of 400 MB learned; one row of 2.5 GB among three of
    them is killed (or gets them killed): what was killed runs again alone on the node and
    succeeds; a row of 7 GB cannot run even alone and fails, naming itself and the node's
    memory; the rows beside it (killed with it, or started while its memory was still being
    freed) are not blamed."""
    memory = psutil.virtual_memory()
    threshold = (memory.total - memory.available + 5 * 2**30) / memory.total
    env = {**local_env(), "RAY_memory_usage_threshold": f"{threshold:.4f}",
           "RAY_memory_monitor_refresh_ms": "100"}
    proc = subprocess.run([sys.executable, "-c", OUTLIER_DRIVER, "400", "2500", "7000"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, why_it_failed(proc.stderr)
    outlier = next(x for x in proc.stdout.splitlines() if x.startswith("OUTLIER")).split()
    # (whether the outlier's node ran out depends on the memory in use beside the test: only
    # that nothing was lost or failed is asserted; the row below is killed for sure)
    assert outlier[1] == "True" and outlier[3] == "0", (outlier, proc.stderr[-2000:])
    impossible = proc.stdout[proc.stdout.index("IMPOSSIBLE"):].splitlines()
    assert impossible[0].split()[1:] == ["True", WorkerDiedError.__name__, "1"], impossible
    assert "row 1 needs more memory than its node can give even to it alone" in impossible[1]
    assert "Ray's memory monitor kills above" in impossible[1]
