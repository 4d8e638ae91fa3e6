"""Ray going away while a sweep runs: ``ray.shutdown()`` between two ``next()`` of an open
imap, or from another thread during a map, ends the run at once with a clear error (the
driver used to wait forever for references that never resolve). Each scenario runs in a
subprocess with its own Ray (never the suite's), under a timeout: a hang fails the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_script

PRELUDE = """
import json, sys, threading, time
import ray
from thread_chunks import ThreadChunksError, chunked
from tests.conftest import recorded
from tests.workloads import executions, slow_count

def start() -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False)
"""

GONE = "Ray was shut down while 'slow_count' ran"


@pytest.mark.parametrize("watched", [True, False])
def test_shutdown_between_two_next_calls_of_an_imap(tmp_path: Path, watched: bool) -> None:
    """The next ``next()`` raises at once; what was handed out stays handed out and is in
    the checkpoint; with Ray started again the same decorated function makes new actors,
    resumes from the checkpoint (rows handed out do not run again) and returns the right
    results. Unwatched: as with a Ray that gives no signal of its shutdown (a Ray Client
    connection), where the run looks whether Ray still runs."""
    out = run_script(PRELUDE + f"""
import thread_chunks._engine.ray_adapter
if not {watched!r}:
    thread_chunks._engine.ray_adapter.watch_shutdown = lambda watcher: False
markers, path = {str(tmp_path / "markers")!r}, {str(tmp_path / "ck.sqlite")!r}
import os; os.mkdir(markers)
start()
slow = chunked(chunk_size=2, progress_bar=False, batch_size=1)(slow_count)
rows = [[i, markers, 0.2] for i in range(12)]
it = slow.imap(rows, path=path)
handed = [next(it), next(it), next(it)]
ray.shutdown()
try:
    handed.extend(it)
    error = ""
except ThreadChunksError as exc:
    error = str(exc)
kept = recorded(__import__("pathlib").Path(path))
start()
again = slow.map(rows, path=path)
print(json.dumps(dict(handed=handed, error=error, kept=kept, again=again,
                      calls=slow.stats.calls, runs=executions(markers))))
""", timeout=240).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert report["error"].startswith(GONE), report["error"]
    handed = report["handed"]
    assert handed == [i * i for i in range(len(handed))]  # in order, nothing lost or doubled
    assert report["kept"] >= len(handed)
    assert report["again"] == [i * i for i in range(12)]
    assert report["calls"] == 12 - report["kept"]  # the rest came from the checkpoint
    assert all(report["runs"][str(i)] == 1 for i in range(len(handed)))


@pytest.mark.parametrize("driver", ["map", "amap"])
def test_shutdown_from_another_thread_during_a_map(tmp_path: Path, driver: str) -> None:
    """Twice in one process (it hung 3 times in 4): the map raises the clear error, and the
    next map, Ray running again, works."""
    out = run_script(PRELUDE + f"""
import asyncio
markers = {str(tmp_path / "markers")!r}
import os, pathlib; os.mkdir(markers)
slow = chunked(chunk_size=2, progress_bar=False, batch_size=1)(slow_count)
rows = [[i, markers, 0.2] for i in range(60)]

def stop_after_two_calls(path: str) -> None:
    while recorded(pathlib.Path(path)) < 2:
        time.sleep(0.02)
    ray.shutdown()

errors = []
for attempt in range(2):
    path = {str(tmp_path)!r} + f"/ck{{attempt}}.sqlite"
    start()
    threading.Thread(target=stop_after_two_calls, args=(path,)).start()
    try:
        if {driver!r} == "map":
            slow.map(rows, path=path)
        else:
            asyncio.run(slow.amap(rows, path=path))
        errors.append("")
    except ThreadChunksError as exc:
        errors.append(str(exc))
start()
again = slow.map(rows[:4])
print(json.dumps(dict(errors=errors, again=again)))
""", timeout=240).stdout
    report = json.loads(out.strip().splitlines()[-1])
    assert len(report["errors"]) == 2
    for error in report["errors"]:
        assert error.startswith(GONE), error
    assert report["again"] == [0, 1, 4, 9]


@pytest.mark.usefixtures("ray_running")
def test_an_actor_no_node_can_hold_fails_every_map_at_once() -> None:
    """The second map does not skip the check and wait out ``placement_timeout`` (which
    would end in an ActorPlacementError instead)."""
    from tests.workloads import square
    from thread_chunks import chunked

    huge = chunked(chunk_size=1, progress_bar=False, placement_timeout=30,
                   actor_options={"num_cpus": 64})(square)
    for _ in range(2):
        with pytest.raises(ValueError, match="no node of the Ray cluster can hold an actor"):
            huge.map([[1]])
