"""The thread-chunks 1.0.5 API on real Ray: chunk, Chunker, LabelledActor, config."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import ray

import thread_chunks
from tests import workloads as w
from thread_chunks import Chunker, LabelledActor, RemoteLabelledActor, chunk
from thread_chunks._actor import Outcome, Replied
from thread_chunks._engine import Batcher

pytestmark = pytest.mark.usefixtures("ray_running")


def test_results_are_in_input_order_even_when_calls_finish_out_of_order() -> None:
    rng = random.Random(7)
    rows = [[i, rng.uniform(0, 0.02)] for i in range(60)]
    out = chunk(w.interval, rows, chunk_size=2)
    assert [r[0] for r in out] == list(range(60))


def test_plain_values_and_dict_rows() -> None:
    assert chunk(w.add, [[1, 2], (3, 4), {"x": 5, "y": 6}, {"x": 7}], chunk_size=2) == [
        3, 7, 11, 7]


@pytest.mark.parametrize("size", [1, 2])
def test_never_more_than_chunk_size_calls_at_once(size: int) -> None:
    with Chunker(w.interval, chunk_size=size, batch_size=1) as chunker:
        # started before the run: rows go only to started actors, and on a loaded machine a
        # second actor may start after a short run is over
        pids = {ray.get(a._tc_identity.remote())[1] for a in chunker.actors}
        out = chunker([[i, 0.05] for i in range(12)])
    assert w.max_overlap([(s, e) for _, s, e, _ in out]) <= size
    assert {p for *_, p in out} == pids and len(pids) == size  # each actor, and no other


def test_concurrency_bound_holds_with_automatic_batching() -> None:
    out = chunk(w.interval, [[i, 0.0005] for i in range(400)], chunk_size=1)
    assert w.max_overlap([(s, e) for _, s, e, _ in out]) == 1
    assert [r[0] for r in out] == list(range(400))


@pytest.mark.parametrize(("actors", "rows"), [(2, 51), (12, 51), (100, 408), (1000, 1024)])
def test_automatic_batches_grow_with_the_pool_so_one_driver_keeps_up(actors: int,
                                                                     rows: int) -> None:
    """Rows of ~1 ms (0.98): calls of ~50 ms on a small pool; on a large one, calls long enough that
    replies come no faster than 250 a second (one driver handles ~500), up to 1,024 rows."""
    batcher = Batcher(None, None)
    for _ in range(20):
        n = batcher.size
        outcomes: list[Outcome] = [(i, True, b"", 0.0, 0.0, "", 0) for i in range(n)]
        batcher.observe(Replied(outcomes, True, n, 0, n * 98e-5, n * 98e-5), actors)
    assert batcher.size == rows
    assert batcher.pipelined is (rows * 98e-5 < 0.1)  # calls of 0.1 s or more are not queued


def test_chunker_reuses_its_actors_across_calls() -> None:
    chunker = Chunker(w.pid, chunk_size=2)
    first = set(chunker([[i] for i in range(20)]))
    handles = chunker.actors
    pids = {ray.get(a._tc_identity.remote())[1] for a in handles}
    second = set(chunker([[i] for i in range(20)]))
    # an actor slower to start may get no row: rows go only to started actors
    assert first | second <= pids and len(pids) == 2
    assert os.getpid() not in pids
    assert chunker.actors == handles
    assert chunker.chunk_size == 2 == len(chunker.actors)


def test_function_is_copied_once_and_a_new_func_is_kept() -> None:
    chunker = Chunker(w.square, chunk_size=2, actor_cls=w.CountingActor)
    assert chunker([[2], [3]]) == [4, 9]
    assert chunker([[4]]) == [16]
    sets = [ray.get(a.sets.remote()) for a in chunker.actors]
    assert sets == [0, 0]  # given at construction: no copy per call
    assert chunker([[2], [3]], func=w.negate) == [-2, -3]
    assert chunker([[5]]) == [-5]  # later calls keep the new function
    assert [ray.get(a.sets.remote()) for a in chunker.actors] == [1, 1]


def test_chunk_with_actors_runs_their_function_or_stores_a_new_one() -> None:
    actors = [RemoteLabelledActor.remote(w.square) for _ in range(2)]
    assert chunk(None, [[3], [4]], actors, chunk_size=2) == [9, 16]
    assert chunk(w.negate, [[3], [4]], actors) == [-3, -4]
    assert chunk(None, [[3]], actors) == [-3]
    assert all(ray.get(a.get_func.remote()) is not None for a in actors)


def test_labelled_actor_contract() -> None:
    actor = LabelledActor(w.add)
    assert actor.run("label", 1, 2) == ("label", 3)
    actor.set_func(w.negate)
    assert actor.get_func() is w.negate
    remote = RemoteLabelledActor.remote(w.square)
    assert ray.get(remote.run.remote(7, 5)) == (7, 25)


def test_custom_remote_actor_subclass_works_with_chunk_and_chunker() -> None:
    remote_cls = ray.remote(w.OffsetActor)
    actors = [remote_cls.remote(w.square) for _ in range(2)]
    assert chunk(None, [[1], [2]], actors) == [1001, 1004]
    assert Chunker(actors=actors)([[3]]) == [1009]
    assert Chunker(w.square, chunk_size=2, actor_cls=w.OffsetActor)([[2]]) == [1004]
    assert Chunker(w.square, chunk_size=1, actor_cls=remote_cls)([[2]]) == [1004]


def test_generator_input_is_read_lazily() -> None:
    pulled = 0

    def rows() -> Iterator[list[int]]:
        nonlocal pulled
        for i in range(50):
            pulled += 1
            yield [i]

    chunker = Chunker(w.square, chunk_size=2, batch_size=1)
    results = chunker.imap(rows(), ordered=False)
    assert pulled == 0  # nothing is read before the first result is asked for
    first = next(results)
    # two rows went out; the first result was quick, so from now on each actor may hold one
    # running call and one waiting: at most 2 * chunk_size rows are out, plus the finished one
    assert 3 <= pulled <= 2 * 2 + 1
    assert sorted([first, *results]) == [i * i for i in range(50)]
    assert pulled == 50


@pytest.mark.parametrize("bad", [None, 5, "abc", b"xy", {"x": 1}])
def test_parameters_that_are_not_an_iterable_of_rows(bad: Any) -> None:
    with pytest.raises(TypeError, match="parameters: expected an iterable of rows"):
        chunk(w.square, bad, chunk_size=1)


@pytest.mark.parametrize("row", ["abc", b"ab", 5, 2.5, None, {1: 2}])
def test_a_bad_row_is_named_by_its_index(row: Any) -> None:
    with pytest.raises(TypeError, match=r"parameters row 2: "):
        chunk(w.square, [[1], [2], row, [4]], chunk_size=1)


def test_a_bad_row_in_a_generator_is_named_when_reached() -> None:
    chunker = Chunker(w.square, chunk_size=1)
    rows = ([i] if i != 3 else "oops" for i in range(6))
    with pytest.raises(TypeError, match=r"parameters row 3: expected a list or tuple"):
        chunker(rows)


@pytest.mark.parametrize("size", [0, -1, 1.5, "2", True])
def test_chunk_size_must_be_a_positive_int(size: Any) -> None:
    with pytest.raises(ValueError, match="chunk_size: expected a positive int"):
        chunk(w.square, [[1]], chunk_size=size)
    with pytest.raises(ValueError, match="chunk_size"):
        Chunker(w.square, chunk_size=size)


def test_func_and_actors_rules() -> None:
    actors = [RemoteLabelledActor.remote(w.square)]
    with pytest.raises(ValueError, match="not both"):
        Chunker(w.square, actors)
    with pytest.raises(ValueError, match="not both"):
        Chunker()
    with pytest.raises(ValueError, match="cannot both be None"):
        chunk(None, [[1]])
    with pytest.raises(ValueError, match="does not agree with the number of actors"):
        chunk(None, [[1]], actors, chunk_size=2)
    with pytest.raises(ValueError, match="does not agree with the number of actors"):
        Chunker(actors=actors, chunk_size=3)


def test_a_function_ray_cannot_serialise_is_named() -> None:
    lock = threading.Lock()

    def holds_a_lock(x: int) -> int:
        with lock:
            return x

    with pytest.raises(TypeError, match="cannot send function .*holds_a_lock.* to Ray"):
        Chunker(holds_a_lock, chunk_size=1)


def test_an_empty_parameter_list_gives_an_empty_result() -> None:
    assert chunk(w.square, [], chunk_size=2) == []
    assert chunk(w.square, iter([]), chunk_size=2) == []


def test_config_defaults_follow_1_0_5() -> None:
    cfg = thread_chunks.config
    assert cfg.default_chunk_size == os.cpu_count()
    assert cfg.ray_config == {"num_cpus": cfg.default_chunk_size}
    assert thread_chunks.config.progress_bar is False  # set by the suite's fixture
