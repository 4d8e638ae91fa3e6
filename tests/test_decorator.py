"""The @chunked decorator and the Chunked object, on real actors."""

from __future__ import annotations

import gc
import inspect
import logging
import os
import pickle
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import ray
from ray.exceptions import RayActorError

from tests import workloads as w
from tests.conftest import alive
from thread_chunks import Chunked, Chunker, ConcurrencyReducedWarning, LabelledActor, chunked
from thread_chunks._engine import Pool

pytestmark = pytest.mark.usefixtures("ray_running")


def test_a_module_level_function_runs_on_actors_and_locally() -> None:
    assert w.cube(3) == 27  # a plain local call
    assert w.cube.map([[1], [2], {"x": 3}]) == [1, 8, 27]
    pids = chunked(chunk_size=2)(w.pid).map([[i] for i in range(8)])
    assert os.getpid() not in pids


def test_a_worker_that_imports_the_module_finds_the_object_and_can_call_it() -> None:
    # fib calls itself by its global name; on the worker that name is the Chunked object
    assert w.fib.map([[10], [15]]) == [55, 610]


def test_identity_and_signature_are_the_functions() -> None:
    assert w.cube.__name__ == "cube"
    assert w.cube.__qualname__ == "cube"
    assert w.cube.__doc__ == "Cube a number."
    assert w.cube.__module__ == "tests.workloads"
    assert w.cube.__wrapped__(2) == 8
    assert str(inspect.signature(w.cube)) == "(x: 'int') -> 'int'"
    assert isinstance(w.cube, Chunked)


def test_nested_functions_and_callables() -> None:
    offset = 10

    @chunked(chunk_size=2)
    def shifted(x: int) -> int:
        return x + offset

    assert shifted.map([[1], [2]]) == [11, 12]

    class Scale:
        def __call__(self, x: int) -> int:
            return 3 * x

    assert chunked(Scale()).map([[1], [2]]) == [3, 6]


def test_bare_decorator_uses_the_defaults() -> None:
    @chunked
    def double(x: int) -> int:
        return 2 * x

    assert double.chunk_size == os.cpu_count()
    assert double.map([[4]]) == [8]
    double.close()


def test_no_actor_exists_before_first_use_and_actors_are_cached() -> None:
    f = chunked(chunk_size=2)(w.square)
    assert _pool_of(f) is None
    f.chunker  # noqa: B018 - the Chunker alone creates no actor
    pool = _pool_of(f)
    assert pool is not None and pool.size == 2 and pool.actors_made == 0
    handles = f.actors
    assert len(handles) == 2 and all(h is not None for h in handles)
    assert f.actors == handles
    assert f.map([[3]]) == [9]
    assert f.actors == handles
    assert f.chunker is f.chunker and isinstance(f.chunker, Chunker)


def _pool_of(f: Chunked[Any]) -> Pool | None:
    return f._self_shared.pool


def _wait_for_cpus(count: int) -> None:
    """Until ``count`` of the suite's CPUs are free (an actor another test left starting
    holds one until it has started)."""
    deadline = time.monotonic() + 120
    while ray.available_resources().get("CPU", 0) < count:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.1)


def _die_once_dropped(pids: set[int]) -> None:
    """Assert the actors' worker processes ``pids`` end once their function is dropped."""
    assert pids and os.getpid() not in pids
    deadline = time.monotonic() + 60  # Ray kills an actor once its last handle is gone
    while any(map(alive, pids)) and time.monotonic() < deadline:
        # The pool and its adapter hold each other: a collection frees both, once Ray's
        # callback thread has let go of the last call's (for a few ms after it ends).
        gc.collect()
        time.sleep(0.1)
    assert not any(map(alive, pids)), f"the actors' processes {pids} outlived the function"


def test_a_dropped_function_frees_its_actors_but_not_before_its_last_sweep_ends() -> None:
    """Each actor is a worker process (100 MB or more): a decorated function the program
    drops must not keep them until Ray ends. A sweep still being read keeps them."""
    f = chunked(chunk_size=2)(w.pid)
    pids = set(f.map([[i] for i in range(6)]))
    sweep = f.imap([[i] for i in range(6)])
    seen = [next(sweep)]  # started
    del f
    gc.collect()
    seen.extend(sweep)  # the actors are still there for the sweep
    assert len(seen) == 6
    del sweep
    _die_once_dropped(pids | set(seen))


def test_a_dropped_function_frees_its_actors_while_one_waits_to_be_placed() -> None:
    """Ray holds the callback of a reference until it resolves, and the probe of an actor
    Ray cannot place never does (another actor holds the CPU it needs): what that callback
    reaches must not keep the function's pool, and its placed actor, alive."""
    _wait_for_cpus(2)
    blocker = ray.remote(num_cpus=1)(w.Tagged).remote()
    try:
        ray.get(blocker.__ray_ready__.remote())  # placed: one CPU left
        f = chunked(chunk_size=2, actor_options={"num_cpus": 1})(w.pid)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConcurrencyReducedWarning)
            pids = set(f.map([[i] for i in range(4)]))
        assert len(pids) == 1  # the other actor is still waiting to be placed
        del f
        _die_once_dropped(pids)
    finally:
        ray.kill(blocker)


def test_replace_shares_the_pool_and_switching_copies_once() -> None:
    f = chunked(chunk_size=2, actor_cls=w.CountingActor)(w.square)
    g = f.replace(w.negate)
    assert g.__name__ == "negate" and g.options is f.options
    assert f.map([[3], [4]]) == [9, 16]  # two rows, two idle actors: both are created
    assert g.map([[3], [4]]) == [-3, -4]
    assert g.map([[5]]) == [-5]  # no second copy for the same function
    assert f.actors == g.actors
    assert [ray.get(a.sets.remote()) for a in f.actors] == [1, 1]
    assert f.map([[3]]) == [9]  # switching back copies once more
    assert [ray.get(a.sets.remote()) for a in f.actors] == [2, 2]
    assert w.square(4) == 16 and g(4) == -4


def test_actor_cls_plain_and_remote() -> None:
    plain = chunked(chunk_size=1, actor_cls=w.OffsetActor)(w.square)
    remote = chunked(chunk_size=1, actor_cls=ray.remote(w.OffsetActor))(w.square)
    assert plain.map([[2]]) == [1004]
    assert remote.map([[3]]) == [1009]


@pytest.mark.parametrize("bad", [object, int, "LabelledActor", ray.remote(type("X", (), {}))])
def test_bad_actor_cls_is_a_type_error_naming_it(bad: Any) -> None:
    with pytest.raises(TypeError, match="actor_cls: expected a subclass of .*LabelledActor"):
        chunked(actor_cls=bad)


def test_unknown_option_and_bad_values_fail_at_decoration() -> None:
    with pytest.raises(TypeError, match="chunksize"):
        chunked(chunksize=3)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="chunk_size"):
        chunked(chunk_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        chunked(batch_size=-2)
    with pytest.raises(TypeError, match="expected a callable"):
        chunked(5)  # type: ignore[call-overload]


def test_actor_options_reach_ray() -> None:
    f = chunked(chunk_size=2, actor_options={"num_cpus": 0.5})(w.assigned)
    assert f.map([[0], [1]]) == [{"CPU": 0.5}, {"CPU": 0.5}]  # what Ray gave each actor
    f.close()


def test_actor_options_no_node_can_satisfy_are_refused_before_any_actor() -> None:
    f = chunked(chunk_size=1, actor_options={"resources": {"nowhere": 1}})(w.square)
    with pytest.raises(ValueError, match="no node of the Ray cluster .* nowhere=1"):
        f.map([[1]])
    assert f._self_shared.pool is not None and f._self_shared.pool.size == 1 \
        and f._self_shared.pool.actors_made == 0


def test_more_actors_than_fit_the_cluster_shrink_the_pool_instead_of_waiting_forever() -> None:
    # each actor holds a whole CPU and the suite's Ray has 2: a third would never be placed
    f = chunked(chunk_size=3, actor_options={"num_cpus": 1})(w.square)
    with pytest.warns(ConcurrencyReducedWarning, match="only 2 actors .* CPU=1 fit"):
        assert f.map([[i] for i in range(6)]) == [i * i for i in range(6)]
    assert f.chunk_size == 2 and len(f.actors) == 2
    f.close()


def test_imap_ordered_and_unordered(tmp_path: Path) -> None:
    # memory_budget=None: both rows start at once (no first call alone to learn memory)
    f = chunked(chunk_size=2, batch_size=1, memory_budget=None)(w.wait_for)
    g = f.replace(w.touch_then)
    flag = str(tmp_path / "flag")
    assert list(f.imap([[1, flag, 0.0], [2, flag, 0.0]])) == [1, 2]
    # row 0 waits for a file the test makes only once it has a result: row 1 comes first.
    # (Not "row 1 makes it": both could finish before the driver looks, and Ray then reports
    # them in the order they were asked for.)
    release = tmp_path / "release"
    rows: list[Any] = [{"x": 0, "path": str(release)}, {"x": 1, "path": str(tmp_path / "y")}]

    def mixed(x: int, path: str) -> int:
        return w.wait_for(x, path) if x == 0 else w.touch_then(x, path)

    h = f.replace(mixed)
    unordered = h.imap(rows, ordered=False)
    assert next(unordered) == 1
    release.touch()
    assert list(unordered) == [0]
    assert list(h.imap(rows, ordered=True)) == [0, 1]
    assert g.map([[5, str(tmp_path / "x")]]) == [5]


def test_imap_reads_its_input_lazily() -> None:
    pulled: list[int] = []

    def rows() -> Any:
        for i in range(20):
            pulled.append(i)
            yield [i]

    f = chunked(chunk_size=2, batch_size=1)(w.square)
    it = f.imap(rows(), ordered=False)
    assert pulled == []
    first = next(it)
    assert 3 <= len(pulled) <= 2 * 2 + 1  # one running and one queued call per actor at most
    assert sorted([first, *it]) == [i * i for i in range(20)]
    assert len(pulled) == 20


def test_abandoning_imap_stops_the_calls_in_flight(tmp_path: Path) -> None:
    f = chunked(chunk_size=2, batch_size=1)(w.wait_for)
    never = str(tmp_path / "never")
    before = f.actors
    it = f.imap([[0, str(tmp_path)], [1, never], [2, never], [3, never]], ordered=False)
    assert next(it) == 0
    del it  # dropping the iterator (same as a break, or garbage collection)
    with pytest.raises(RayActorError):  # the busy actor was killed, not left running
        ray.get([a._tc_identity.remote() for a in before], timeout=30)
    assert f.map([[5, str(tmp_path)]]) == [5]  # the pool makes new actors


def test_breaking_out_of_imap_stops_the_calls_in_flight(tmp_path: Path) -> None:
    f = chunked(chunk_size=1, batch_size=1)(w.wait_for)
    never = str(tmp_path / "never")
    [before] = f.actors
    for value in f.imap([[0, str(tmp_path)], [1, never]]):
        assert value == 0
        break
    with pytest.raises(RayActorError):
        ray.get(before._tc_identity.remote(), timeout=30)


def test_two_threads_racing_get_one_pool() -> None:
    f = chunked(chunk_size=2)(w.square)
    barrier = threading.Barrier(2)
    results: list[list[int]] = [[], []]
    pools: list[object] = [None, None]

    def work(i: int) -> None:
        barrier.wait()
        results[i] = f.map([[j] for j in range(30)])
        pools[i] = f._self_shared.pool

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1] == [j * j for j in range(30)]
    assert pools[0] is pools[1] is not None
    assert len(f.actors) == 2


def test_two_threads_with_different_functions_on_one_pool() -> None:
    f = chunked(chunk_size=2)(w.square)
    g = f.replace(w.negate)
    out: dict[str, list[int]] = {}
    barrier = threading.Barrier(2)

    def work(name: str, h: Chunked[Any]) -> None:
        barrier.wait()
        for _ in range(5):
            out[name] = h.map([[j] for j in range(40)])

    threads = [threading.Thread(target=work, args=(n, h)) for n, h in (("f", f), ("g", g))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out["f"] == [j * j for j in range(40)]
    assert out["g"] == [-j for j in range(40)]


def test_close_then_reuse_and_with_block() -> None:
    f = chunked(chunk_size=2)(w.square)
    first = f.actors
    f.close()
    with pytest.raises(RayActorError):
        ray.get([a._tc_identity.remote() for a in first], timeout=30)
    with f:
        assert f.map([[2]]) == [4]
        second = f.actors
        assert second != first
    with pytest.raises(RayActorError):
        ray.get([a._tc_identity.remote() for a in second], timeout=30)
    assert f.map([[3]]) == [9]


def test_instance_methods_are_refused_clearly() -> None:
    class Model:
        @chunked
        def predict(self, x: int) -> int:
            return x

    with pytest.raises(TypeError, match="does not support instance methods"):
        Model().predict(1)
    assert isinstance(Model.__dict__["predict"], Chunked)


def test_pickling_gives_a_fresh_object_for_the_same_function() -> None:
    assert pickle.loads(pickle.dumps(w.cube)) is w.cube  # by reference, as Ray does

    def local(x: int) -> int:
        return x + 1

    f = chunked(chunk_size=1)(local)
    f.actors  # noqa: B018
    # cloudpickle ships it by value: a Chunked for the same function and options, with a
    # pool of its own (none yet), not the plain function (tests/test_nested.py)
    copy = cloudpickle.loads(cloudpickle.dumps(f))
    assert isinstance(copy, Chunked) and copy(2) == 3 and copy.options == f.options
    assert copy._self_shared.pool is None
    plain = pickle.loads(pickle.dumps(chunked(chunk_size=1)(w.square)))
    assert isinstance(plain, Chunked) and plain(3) == 9 and plain._self_shared.pool is None
    f.close()


def test_labelled_actor_subclass_needs_no_registration() -> None:
    class Plus(LabelledActor):
        def run(self, label: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            return label, super().run(label, *args, **kwargs)[1] + 1

    f = chunked(chunk_size=1, actor_cls=Plus)(w.square)
    assert f.map([[3]]) == [10]
    f.close()


def test_auto_chunk_size_is_logged_and_shown_in_the_progress_bar(
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    # 'auto' counts the CPUs available now: wait for the suite's 2 to be free first
    _wait_for_cpus(2)
    learned = chunked(chunk_size="auto")(w.square)  # no memory_per_call: memory is learned
    with caplog.at_level(logging.INFO, logger="thread_chunks"):
        assert learned.chunk_size == 2  # the suite's Ray has 2 CPUs
    assert "2 CPUs available; calls admitted by their measured memory" in caplog.text
    assert learned.map([[3]]) == [9]
    learned.close()
    f = chunked(chunk_size="auto", memory_per_call=2**20, progress_bar=True)(w.square)
    with caplog.at_level(logging.INFO, logger="thread_chunks"):
        size = f.chunk_size
    assert 1 <= size <= 2  # the suite's Ray has 2 CPUs and plenty of memory for 1 MiB calls
    assert f"chunk_size='auto': {size} at once" in caplog.text
    assert f.map([[3], [4]]) == [9, 16]
    assert f"square [auto: {size} at once]" in capsys.readouterr().err
    f.close()
