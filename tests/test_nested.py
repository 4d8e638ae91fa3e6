"""Sweeps inside sweeps (a decorated function whose body maps another one) and copies of a
decorated function."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import cloudpickle
import pytest
import ray
import ray.cloudpickle

from tests import nested_workloads as nw
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
