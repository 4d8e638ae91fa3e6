"""When things fail: task errors, retries, dead workers, timeouts, memory kills, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests import workloads as w
from tests.conftest import ROOT, local_env, wait_until_recorded, why_it_failed
from thread_chunks import Checkpoint, Chunker, WorkerDiedError, chunk, chunked

pytestmark = pytest.mark.usefixtures("ray_running")


def test_a_failing_call_raises_the_users_class_naming_the_row(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(ValueError, match="bad value 3") as caught:
        chunk(w.fail_on, [[i] for i in range(8)], chunk_size=2, path=ckpt, batch_size=1)
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "thread-chunks: raised by row 3: fail_on(3)" in notes
    assert "remote traceback" in notes and "raise ValueError" in notes
    view = Checkpoint.load(ckpt)  # what finished before the failure is kept
    assert view.completed[:3] == [True, True, True] and not view.completed[3]
    assert isinstance(view.failed[3], ValueError)


def test_on_error_return_puts_the_exception_in_the_rows_slot(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    out = chunk(w.fail_on, [[i] for i in range(6)], chunk_size=2, path=ckpt,
                on_error="return")
    assert out[:3] == [0, 1, 2] and out[4:] == [4, 5]
    assert isinstance(out[3], ValueError) and "bad value 3" in str(out[3])
    f = chunked(chunk_size=2)(w.fail_on)
    mapped = f.map([[3], [4]], on_error="return")
    assert isinstance(mapped[0], ValueError) and mapped[1] == 4
    streamed = list(f.imap([[3], [4]], on_error="return", ordered=True))
    assert isinstance(streamed[0], ValueError) and streamed[1] == 4
    # the checkpoint records the failure; a rerun retries only that row
    runs = tmp_path / "runs"
    runs.mkdir()
    rows = [[i, str(runs), 1] for i in range(4)]
    first = chunk(w.flaky, rows, chunk_size=2, path=tmp_path / "f.ckpt", on_error="return")
    assert all(isinstance(v, ValueError) for v in first)
    assert chunk(w.flaky, rows, chunk_size=2, path=tmp_path / "f.ckpt") == [0, 1, 2, 3]


def test_retries_of_a_flaky_call(tmp_path: Path) -> None:
    rows = [[i, str(tmp_path), 2] for i in range(4)]
    chunker = Chunker(w.flaky, chunk_size=2, retries=2)
    assert chunker(rows) == [0, 1, 2, 3]
    assert chunker.stats.retries == 8 and chunker.stats.failures == 0
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError, match="flaky failure 1"):
        chunk(w.flaky, [[0, str(other), 2]], chunk_size=1, retries=1)
    third = tmp_path / "third"
    third.mkdir()
    with pytest.raises(ValueError, match="flaky failure 0"):  # not a KeyError: no retry
        chunk(w.flaky, [[0, str(third), 1]], chunk_size=1, retries=3, retry_on=KeyError)


def test_a_worker_killed_mid_call_is_replaced_and_its_call_rerun(tmp_path: Path) -> None:
    f = chunked(chunk_size=2, batch_size=1)(w.announce_and_sleep)
    rows = [[i, str(tmp_path), 0.3] for i in range(8)]

    def killer() -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            for entry in tmp_path.iterdir():
                if entry.name.startswith("running-3-"):
                    os.kill(int(entry.name.split("-")[2]), signal.SIGKILL)
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=killer)
    thread.start()
    assert f.map(rows) == list(range(8))
    thread.join()
    assert f.stats.worker_deaths == 1
    assert len([e for e in tmp_path.iterdir() if e.name.startswith("running-3-")]) == 2


def test_os_exit_in_a_call_is_survived(tmp_path: Path) -> None:
    chunker = Chunker(w.exit_once, chunk_size=2)
    assert chunker([[i, str(tmp_path), 5] for i in range(10)]) == list(range(10))
    assert chunker.stats.worker_deaths == 1


def test_a_row_that_always_kills_its_worker_fails_with_worker_died_error() -> None:
    rows = [[i, 2] for i in range(5)]
    with pytest.raises(WorkerDiedError, match="row 2 killed its worker 3 times") as caught:
        chunk(w.always_exit, rows, chunk_size=2)
    assert caught.value.index == 2 and caught.value.deaths == 3
    chunker = Chunker(w.always_exit, chunk_size=2, max_worker_deaths=2, batch_size=1)
    out = chunker(rows, on_error="return")
    assert out[:2] == [0, 1] and out[3:] == [3, 4]
    assert isinstance(out[2], WorkerDiedError) and out[2].deaths == 2
    assert chunker.stats.worker_deaths >= 2  # and one more where a pipelined death was unclear


def test_a_call_past_its_timeout_gets_a_timeout_error_and_others_complete() -> None:
    rows = [[0, 0.01], [1, 60.0], [2, 0.01], [3, 0.01]]
    out = chunk(w.sleep_for, rows, chunk_size=2, timeout=2.0, on_error="return")
    assert out[0] == 0 and out[2:] == [2, 3]
    assert isinstance(out[1], TimeoutError) and "timeout=2.0s" in str(out[1])
    with pytest.raises(TimeoutError, match="row 1 ran longer"):
        chunk(w.sleep_for, rows, chunk_size=2, timeout=2.0)


def test_bad_failure_options_are_refused() -> None:
    with pytest.raises(ValueError, match="on_error"):
        chunk(w.square, [[1]], on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retries"):
        chunk(w.square, [[1]], retries=-1)
    with pytest.raises(TypeError, match="retry_on"):
        chunk(w.square, [[1]], retry_on=(ValueError, "x"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        chunked(timeout=0)


SIGINT_DRIVER = """
import sys, time, thread_chunks
from tests import workloads as w
thread_chunks.config.ray_config = {"num_cpus": 2, "include_dashboard": False}
rows = [[i, 0.5] for i in range(200)]
try:
    thread_chunks.chunk(w.sleep_for, rows, chunk_size=2, path=sys.argv[1], progress_bar=False,
                        batch_size=1)
except KeyboardInterrupt:
    print(f"caught {time.time()}", flush=True)
    raise
"""


def test_ctrl_c_stops_quickly_keeps_the_checkpoint_and_leaves_no_orphans(
        tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    env = local_env()
    driver = subprocess.Popen([sys.executable, "-c", SIGINT_DRIVER, str(ckpt)], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    wait_until_recorded(driver, ckpt, 4)
    family = psutil.Process(driver.pid).children(recursive=True)
    assert family  # Ray's processes, started by this driver
    sent = time.time()
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=60)
    exited = time.time() - sent
    assert stdout.startswith("caught "), (stdout, stderr)
    caught = float(stdout.split()[1]) - sent
    print(f"\nSIGINT -> KeyboardInterrupt in user code: {caught:.2f} s; process exit: "
          f"{exited:.2f} s")
    assert "KeyboardInterrupt" in stderr
    view = Checkpoint.load(ckpt)
    assert view.done >= 4 and all(view.output[i] == i for i, c in enumerate(view.completed) if c)
    _, alive = psutil.wait_procs(family, timeout=30)
    assert alive == [], [p.cmdline() for p in alive]


MEMORY_DRIVER = """
import sys, warnings, psutil, thread_chunks
from tests import workloads as w
from thread_chunks import ConcurrencyReducedWarning, chunked
thread_chunks.config.ray_config = {"num_cpus": 2, "include_dashboard": False}
f = chunked(chunk_size=2, batch_size=1, progress_bar=False, memory_budget=None)(w.hold_memory)
assert f.map([[0, 1, 0.0], [1, 1, 0.0]]) == [0, 1]  # Ray and both actors started
# the block is sized from the memory in use now, with Ray running: one call leaves half a
# block below the threshold, two go half a block above it
memory = psutil.virtual_memory()
limit = float(sys.argv[1]) * memory.total
block_mb = int((limit - (memory.total - memory.available)) / 1.5 / 2**20)
assert block_mb >= 500, block_mb  # the machine is too busy for this test
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = f.map([[i, block_mb, 2.0] for i in range(6)])
shrunk = [str(c.message) for c in caught if c.category is ConcurrencyReducedWarning]
print("RESULT", out, f.stats.worker_deaths, f.stats.final_concurrency, len(shrunk))
print("\\n".join(shrunk), file=sys.stderr)
"""


def test_memory_kills_reduce_concurrency_and_lose_nothing() -> None:
    """The last resort, without memory admission (``memory_budget=None``; with it, see
    test_learned_memory): Ray's memory monitor, with a threshold 4 GiB above the memory in
    use (the driver's own Ray takes 1.3-2 GiB of it), and calls sized once Ray runs so that
    one fits with half a call to spare and two do not."""
    memory = psutil.virtual_memory()
    used = memory.total - memory.available
    threshold = (used + 4 * 2**30) / memory.total
    env = local_env()
    env.update(RAY_memory_usage_threshold=f"{threshold:.4f}",
               RAY_memory_monitor_refresh_ms="100")
    proc = subprocess.run([sys.executable, "-c", MEMORY_DRIVER, f"{threshold:.4f}"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, why_it_failed(proc.stderr)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    assert line.startswith("RESULT [0, 1, 2, 3, 4, 5] "), line  # nothing lost, in order
    deaths, final, warned = (int(x) for x in line.split()[-3:])
    assert deaths >= 1 and final == 1 and warned == 1, (line, proc.stderr[-2000:])
    assert "killed for lack of memory" in proc.stderr
