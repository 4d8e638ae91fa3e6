"""Sweeps inside sweeps (a decorated function whose body maps another one) and copies of a
decorated function."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest
import ray
import ray.cloudpickle
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from tests import nested_workloads as nw
from tests import workloads as w
from tests.conftest import ROOT, local_env
from thread_chunks import Chunked, chunked

# -- sweeps inside sweeps -------------------------------------------------------------------


def test_a_sweep_inside_a_sweep_from_a_script() -> None:
    # outer and inner are decorated in __main__: cloudpickle ships outer by value, with inner
    # among its globals; inner must arrive as a Chunked (own pool there), not as the function
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "nested_sweep.py")],
                          capture_output=True, text=True, timeout=240, env=local_env(),
                          cwd=str(ROOT))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.strip().splitlines()[-1] == "nested ok"


@pytest.mark.usefixtures("ray_running")
def test_a_sweep_inside_a_sweep_from_a_module() -> None:
    # pickled by reference: the actor imports tests.nested_workloads and finds inner there
    assert nw.outer.map([[1], [2]]) == [("Chunked", nw.inner.options, [10, 11, 12]),
                                        ("Chunked", nw.inner.options, [20, 21, 22])]
    nw.outer.close()


@pytest.mark.usefixtures("ray_running")
def test_a_sweep_inside_a_sweep_of_local_functions() -> None:
    # inner reaches the actor in outer's closure (by value, as from __main__)
    @chunked(chunk_size=2, batch_size=1, progress_bar=False, actor_options={"num_cpus": 0})
    def inner(p: int, d: int) -> int:
        return 10 * d + p

    @chunked(chunk_size=1, batch_size=1)
    def outer(d: int) -> tuple[str, int, list[int]]:
        kind = type(inner).__name__
        if kind != "Chunked":  # the bug: the plain function, which has no .map
            return kind, 0, []
        return kind, inner.chunk_size, inner.map([[p, d] for p in range(4)])

    assert outer.map([[1], [2]]) == [("Chunked", 2, [10, 11, 12, 13]),
                                     ("Chunked", 2, [20, 21, 22, 23])]
    assert inner._self_shared.pool is None  # the actor made a pool of its own
    outer.close()


@pytest.mark.usefixtures("ray_running")
def test_closing_the_outer_actors_stops_the_inner_actors_they_made() -> None:
    @chunked(chunk_size=2, batch_size=1, progress_bar=False, actor_options={"num_cpus": 0})
    def inner(x: int) -> int:
        return x

    @chunked(chunk_size=1, progress_bar=False)
    def outer(x: int) -> list[ActorHandle[Any]]:
        inner.map([[x], [x + 1]])
        return inner.actors

    [handles] = outer.map([[1]])
    assert len(handles) == 2 and len(ray.get([h._tc_identity.remote() for h in handles])) == 2
    outer.close()  # Ray stops the actors an actor made when it dies
    deadline = time.monotonic() + 60
    while any(_alive(h) for h in handles):
        assert time.monotonic() < deadline, "the inner actors outlived the outer one"
        time.sleep(0.2)


def _alive(actor: ActorHandle[Any]) -> bool:
    try:
        ray.get(actor._tc_identity.remote(), timeout=30)
    except RayActorError:
        return False
    return True


_MAIN = '''
from thread_chunks import chunked

@chunked(chunk_size=3, retries=2, actor_options={"num_cpus": 0})
def inner(x):
    return x + 1

def outer(x):
    return inner.map([[x]])
'''


@pytest.mark.parametrize("pickler", [cloudpickle, ray.cloudpickle], ids=["cloudpickle", "ray"])
def test_cloudpickle_ships_a_chunked_global_of_main_as_a_chunked(pickler: Any) -> None:
    namespace: dict[str, Any] = {"__name__": "__main__"}  # as a script or notebook defines it
    exec(compile(_MAIN, "<script>", "exec"), namespace)
    inner: Chunked[Callable[[int], int]] = namespace["inner"]
    restored = pickler.loads(pickler.dumps(namespace["outer"]))
    shipped = restored.__globals__["inner"]
    assert type(shipped) is Chunked, type(shipped)
    assert shipped.options == inner.options and shipped.chunk_size == 3
    assert shipped._self_shared is not inner._self_shared  # a pool of its own, none made yet
    assert shipped._self_shared.pool is None
    assert shipped(1) == 2 and shipped.__name__ == "inner"
    direct = pickler.loads(pickler.dumps(inner))  # the object itself, not only as a global
    assert type(direct) is Chunked and direct.options == inner.options and direct(2) == 3


def test_a_module_registered_pickle_by_value_ships_its_chunked_by_value() -> None:
    # what cloudpickle does for the functions of such a module (workers cannot import it)
    assert cloudpickle.loads(cloudpickle.dumps(nw.inner)) is nw.inner  # by reference
    registry: Any = cloudpickle  # (the project's cloudpickle stub has no registry)
    registry.register_pickle_by_value(nw)
    try:
        shipped = cloudpickle.loads(cloudpickle.dumps(nw.inner))
    finally:
        registry.unregister_pickle_by_value(nw)
    assert type(shipped) is Chunked and shipped is not nw.inner
    assert shipped.options == nw.inner.options and shipped(1, 2) == 21


# -- copies ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Config:
    """A configuration object holding a decorated function."""

    label: str
    model: Chunked[Callable[[int], int]]
    grid: list[int] = dataclasses.field(default_factory=list)


def _square() -> Chunked[Callable[[int], int]]:
    return chunked(chunk_size=2, retries=1)(w.square)


def test_copy_is_a_chunked_sharing_the_pool() -> None:
    f = _square()
    g = copy.copy(f)
    assert type(g) is Chunked and g is not f
    assert g.options is f.options and g.__wrapped__ is f.__wrapped__
    assert g._self_shared is f._self_shared
    assert g(4) == 16 and g.__name__ == "square" and g.__doc__ == f.__doc__
    assert inspect.signature(g) == inspect.signature(w.square)


def test_deepcopy_is_a_chunked_with_a_pool_of_its_own() -> None:
    f = _square()
    d = copy.deepcopy(f)
    assert type(d) is Chunked and d is not f
    assert d.options == f.options and d.__wrapped__ is f.__wrapped__  # functions are atomic
    assert d._self_shared is not f._self_shared
    assert d(5) == 25 and d.__name__ == "square"
    assert inspect.signature(d) == inspect.signature(w.square)
    both = copy.deepcopy([f, f])  # the memo: one copy for one object
    assert both[0] is both[1] and both[0] is not f


class Scale:
    """A callable object with state: a deep copy of the decorated object copies it too."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, x: int) -> int:
        return self.factor * x


def test_deepcopy_copies_a_callable_object_it_wraps() -> None:
    scale = Scale(3)
    f = chunked(chunk_size=1)(scale)
    d, g = copy.deepcopy(f), copy.copy(f)
    assert d.__wrapped__ is not scale and d(2) == 6
    assert g.__wrapped__ is scale
    scale.factor = 4
    assert f(2) == g(2) == 8 and d(2) == 6


@pytest.mark.usefixtures("ray_running")
def test_copies_run_on_actors_shared_or_their_own() -> None:
    f = _square()
    g, d = copy.copy(f), copy.deepcopy(f)
    assert f.map([[1], [2]]) == [1, 4]
    assert g.map([[3], [4]]) == [9, 16]
    assert d.map([[5], [6]]) == [25, 36]
    handles = f.actors
    assert g.actors == handles  # the copy runs on the same actors
    assert not set(d.actors) & set(handles)  # the deep copy on actors of its own
    d.close()
    assert f.actors == handles and f.map([[7]]) == [49]  # closing it left the original's
    g.close()  # closing the copy closes the actors it shares
    assert f.actors != handles and f.map([[8]]) == [64]
    f.close()


@pytest.mark.usefixtures("ray_running")
def test_a_config_holding_a_decorated_function_copies_and_deep_copies() -> None:
    cfg = Config("run", _square(), [1, 2])
    shallow, deep = copy.copy(cfg), copy.deepcopy(cfg)
    assert shallow.model is cfg.model  # a shallow copy shares its fields, as for any object
    assert type(deep.model) is Chunked and deep.model is not cfg.model
    assert deep.model.options == cfg.model.options and deep.grid == [1, 2]
    assert deep.grid is not cfg.grid
    assert deep.model.map([[x] for x in deep.grid]) == [1, 4]
    assert deep.model._self_shared is not cfg.model._self_shared
    assert cfg.model._self_shared.pool is None  # the original made no actors
    deep.model.close()
