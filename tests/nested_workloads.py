"""A sweep inside a sweep in an importable module: both objects are pickled by reference."""

from __future__ import annotations

from thread_chunks import chunked
from thread_chunks._options import Options


@chunked(chunk_size=1, batch_size=1, progress_bar=False, actor_options={"num_cpus": 0})
def inner(p: int, d: int) -> int:
    return 10 * d + p


@chunked(chunk_size=1, batch_size=1, progress_bar=False)
def outer(d: int) -> tuple[str, Options, list[int]]:
    """What ``inner`` is on the actor running this call, and a sweep of it over 3 rows."""
    return type(inner).__name__, inner.options, inner.map([[p, d] for p in range(3)])
