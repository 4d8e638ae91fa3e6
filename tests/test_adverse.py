"""Promises under the conditions that break them: Ray restarts, cold actors, actors Ray
cannot place (the lost-node case runs on a real multi-node cluster in test_cluster.py)."""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from pathlib import Path

import pytest
import ray

from tests import workloads as w
from tests.conftest import run_script
from thread_chunks import ActorPlacementError, ConcurrencyReducedWarning, chunked


def test_a_decorated_function_outlives_ray_sessions() -> None:
    out = run_script("""
import ray, thread_chunks
from thread_chunks import Chunker, RemoteLabelledActor, ThreadChunksError, chunked
from tests import workloads as w
thread_chunks.config.ray_config = {"num_cpus": 2, "include_dashboard": False}
settings = {"num_cpus": 2, "include_dashboard": False}

def alive(handles):
    return len(ray.get([a._tc_identity.remote() for a in handles], timeout=60))

f = chunked(chunk_size=2, progress_bar=False)(w.square)
g = f.replace(w.negate)
ray.init(**settings)
assert f.map([[1], [2]]) == [1, 4]
old = f.actors
ray.shutdown()
ray.init(**settings)
assert f.map([[3]]) == [9]             # new actors in the new session
assert alive(f.actors) == 2 and f.actors != old
assert g.map([[3]]) == [-3]            # an object sharing the pool too
ray.shutdown()
assert g.map([[4]]) == [-4]            # Ray not running at all: started again
assert ray.is_initialized()
ray.shutdown()
ray.init(**settings)
assert alive(g.actors) == 2 and f.map([[5]]) == [25]

c = Chunker(w.square, chunk_size=2, progress_bar=False, persistent=True)
assert c([[2]]) == [4]
ray.shutdown()
ray.init(**settings)
assert c([[3]]) == [9] and alive(c.actors) == 2

actors = [RemoteLabelledActor.remote(w.square) for _ in range(2)]
handed = Chunker(None, actors, progress_bar=False, persistent=True)
assert handed([[4]]) == [16]
ray.shutdown()
ray.init(**settings)
try:
    handed([[5]])
except ThreadChunksError as exc:
    print("REFUSED", exc)
print("DONE")
""", timeout=300).stdout
    assert "DONE" in out
    assert "REFUSED the actors handed in (actors=) belong to a Ray session that has ended" in out


@pytest.mark.usefixtures("ray_running")
def test_timeout_counts_only_the_time_a_call_runs_not_its_actors_start() -> None:
    # each actor takes 2 s to start; each call 50 ms: a 0.5 s timeout must not fire
    f = chunked(chunk_size=2, timeout=0.5, actor_cls=w.SlowStart)(w.sleep_for)
    assert f.map([[i, 0.05] for i in range(6)]) == list(range(6))
    assert f.stats.failures == 0 and f.stats.worker_deaths == 0
    # and the timeout still fires on a call that runs too long on a started actor
    out = f.map([[0, 0.05], [1, 30.0]], on_error="return")
    assert out[0] == 0 and isinstance(out[1], TimeoutError)
    f.close()


@pytest.fixture
def hog() -> object:
    """Actors holding both CPUs of the suite's Ray (started, then released at the end)."""
    held = chunked(chunk_size=2, actor_options={"num_cpus": 1})(w.square)
    ray.get([a._tc_identity.remote() for a in held.actors], timeout=120)
    yield held
    held.close()


def test_no_placeable_actor_fails_after_placement_timeout_naming_what_is_missing(
        hog: object, caplog: pytest.LogCaptureFixture) -> None:
    f = chunked(chunk_size=1, actor_options={"num_cpus": 1}, placement_timeout=4)(w.square)
    with caplog.at_level(logging.WARNING, logger="thread_chunks"), \
            pytest.raises(ActorPlacementError) as caught:
        f.map([[i] for i in range(3)])
    message = str(caught.value)
    assert "no actor for 'square' could run" in message
    assert "placement_timeout=4" in message
    assert "one actor asks for CPU=1" in message
    assert re.search(r"the Ray cluster has CPU=2\b.* in all, CPU=0\b.* available now", message)
    assert "waiting for Ray to place actors for 'square'" in caplog.text  # said so meanwhile
    hog.close()  # type: ignore[attr-defined]
    assert f.map([[i] for i in range(3)]) == [0, 1, 4]  # the capacity came back
    f.close()


def test_actors_ray_cannot_place_do_not_hold_rows_and_are_reported(
        hog: object, tmp_path: Path) -> None:
    hog.close()  # type: ignore[attr-defined]
    blocker = chunked(chunk_size=1, actor_options={"num_cpus": 1})(w.square)
    ray.get(blocker.actors[0]._tc_identity.remote(), timeout=120)  # one CPU left
    f = chunked(chunk_size=2, batch_size=1, actor_options={"num_cpus": 1},
                placement_timeout=4)(w.gate_then_sleep)
    gate = tmp_path / "gate"
    rows = [[i, str(gate), 0.0] for i in range(8)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def open_gate_when_warned() -> None:
            deadline = time.time() + 120
            while time.time() < deadline and not any(
                    c.category is ConcurrencyReducedWarning for c in list(caught)):
                time.sleep(0.05)
            gate.touch()

        opener = threading.Thread(target=open_gate_when_warned)
        opener.start()
        out = f.map(rows)  # the rows wait on the gate: the run outlives the notice
        opener.join()
    assert [x for x, _ in out] == list(range(8))  # nothing lost, in order
    assert len({pid for _, pid in out}) == 1  # all ran on the one actor Ray placed
    [warning] = [str(c.message) for c in caught if c.category is ConcurrencyReducedWarning]
    assert "1 of 2 actors for 'gate_then_sleep' could not be placed" in warning
    assert "running 1 calls at once" in warning
    blocker.close()
    f.close()
