"""One Ray for the whole suite (2 CPUs); lifecycle and crash tests use subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

import thread_chunks

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_running() -> Iterator[None]:
    """Ray with 2 CPUs, started once for every test that needs it."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """No progress bars in the suite unless a test turns them on."""
    old = thread_chunks.config.progress_bar
    thread_chunks.config.progress_bar = False
    yield
    thread_chunks.config.progress_bar = old


def run_script(code: str, *, timeout: float = 120, env: dict[str, str] | None = None,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python (its own Ray, if it starts one)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=str(ROOT))
    if check and proc.returncode != 0:
        raise AssertionError(f"script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
