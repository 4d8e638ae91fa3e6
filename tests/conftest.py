"""One Ray for the whole suite (2 CPUs); lifecycle and crash tests use subprocesses."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import ray

import thread_chunks
from thread_chunks import CheckpointRestartWarning

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_running() -> Iterator[None]:
    """Ray with 2 CPUs, started once for every test that needs it."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """No progress bars in the suite unless a test turns them on."""
    old = thread_chunks.config.progress_bar
    thread_chunks.config.progress_bar = False
    yield
    thread_chunks.config.progress_bar = old


def local_env() -> dict[str, str]:
    """The environment of a subprocess that starts a Ray of its own (never attaching to the
    suite's or another program's Ray) and imports this checkout."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": "local"}


def run_script(code: str, *, timeout: float = 120, env: dict[str, str] | None = None,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python (its own Ray, if it starts one)."""
    full_env = {**local_env(), **(env or {})}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=str(ROOT))
    if check and proc.returncode != 0:
        raise AssertionError(f"script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def recorded(path: Path) -> int:
    """Finished calls in the checkpoint at ``path`` (0 while there is none yet); read-only."""
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return int(conn.execute(  # stored, or staged by the run going on
                "SELECT count(*) FROM (SELECT key FROM results WHERE ok = 1 "
                "UNION SELECT key FROM staged WHERE ok = 1)").fetchone()[0])
    except sqlite3.Error:
        return 0


def wait_until_recorded(proc: subprocess.Popen[str], path: Path, count: int,
                        timeout: float = 120) -> None:
    """Block until the running ``proc`` has recorded ``count`` calls in ``path``."""
    deadline = time.time() + timeout
    while recorded(path) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"no {count} calls recorded in {timeout} s"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a number taken by another user's process: no)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def until_killed_drivers_calls_end(markers: Path, timeout: float = 120) -> None:
    """Block until the actor processes that ran a killed driver's calls (the pids in the
    names of the marker files ``slow_count`` leaves, ``row-pid-time``) have exited. Ray
    kills a dead driver's actors soon after, not at once: until then a call the driver had
    sent may still start, and its marker appears after the kill."""
    deadline = time.time() + timeout
    seen: set[int] = set()
    while True:
        pids = {int(entry.name.split("-")[1]) for entry in markers.iterdir()}
        if pids == seen:
            return
        seen = pids
        while any(map(alive, pids)):
            assert time.time() < deadline, f"the killed driver's actors {pids} still run"
            time.sleep(0.05)


def why_it_failed(stderr: str) -> str:
    """What a driver run in a subprocess printed when it failed: its traceback when it has
    one (Ray's long memory-kill reports would push it out of a plain tail), else the tail."""
    at = stderr.rfind("Traceback (most recent call last)")
    return stderr[at:][-3000:] if at >= 0 else stderr[-3000:]


@contextmanager
def no_restart() -> Iterator[None]:
    """A CheckpointRestartWarning inside fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointRestartWarning)
        yield
