"""A sweep inside a sweep, both functions decorated in ``__main__``: run as a script
(``python tests/scripts/nested_sweep.py``) by tests/test_nested.py. cloudpickle ships
``outer`` by value, with the globals it reads: ``inner`` must reach the actor as a ``Chunked``.
"""

from __future__ import annotations

import pickle

import ray

from thread_chunks import chunked
from thread_chunks._options import Options


@chunked(chunk_size=1, batch_size=1, progress_bar=False, actor_options={"num_cpus": 0})
def inner(p: int, d: int) -> int:
    return 10 * d + p


@chunked(chunk_size=1, batch_size=1, progress_bar=False)
def outer(d: int) -> tuple[str, Options, int, list[int]]:
    """What ``inner`` is on the actor running this call, and a sweep of it over 3 rows."""
    kind = type(inner).__name__
    if kind != "Chunked":  # the bug: the plain function, which has no .map
        return kind, Options(), 0, []
    return kind, inner.options, inner.chunk_size, inner.map([[p, d] for p in range(3)])


@chunked(chunk_size=1, progress_bar=False)
def fib(n: int) -> int:
    """Calls itself by its global name: on the actor that name is shipped with it."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False)
    got = outer.map([[d] for d in range(2)])
    kinds = [kind for kind, *_ in got]
    assert kinds == ["Chunked", "Chunked"], f"inner reached the actors as {kinds}"
    assert got == [("Chunked", inner.options, 1, [0, 1, 2]),
                   ("Chunked", inner.options, 1, [10, 11, 12])], got
    assert inner._self_shared.pool is None  # the actors made pools of their own
    assert outer.replace(fib).map([[10], [12]]) == [55, 144]  # on the same actor
    # the standard pickler keeps pickling it by reference, as it does a function of __main__
    assert pickle.loads(pickle.dumps(inner)) is inner
    print("nested ok")


if __name__ == "__main__":
    main()
