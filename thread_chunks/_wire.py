"""What crosses to the actors: large arguments are put into Ray's object store once per run.

A sweep typically passes the same big array in every row (``[[big, i] for i in ...]``).
Pickled into every call, it would be copied once per call; instead each large argument is
put into the object store once, the calls carry a reference, and the actor resolves it
(zero-copy for numpy arrays, which arrive read-only, as with Ray's own task arguments).

Large means ``bytes``/``bytearray`` of at least :data:`SHARE_AT_BYTES`, or an object whose
type has an ``nbytes`` attribute (numpy arrays, memoryviews, tensors) that says so: an O(1)
check per argument, nothing is pickled to learn a size. Objects are recognised by identity
within one run, so a later run sees the user's changes. A put is kept while calls holding it
are in flight (retries included); once none does, it stays among the :data:`IDLE_KEEP` most
recently idle puts, for the rows still to come, until newer ones push it out. Every put
is dropped when the run ends, so what a run put into the object store is freed with it.
"""

from __future__ import annotations

import io
import operator
from collections.abc import Iterable
from itertools import chain
from typing import Any

import ray
from ray.cloudpickle import CloudPickler

from ._actor import ARGS, KWARGS, ROW, Item, _ref_at

_SMALL = frozenset({int, float, complex, bool, str, type(None)})
"""Types never shared (a ``str`` is pickled with its row: only buffers are put)."""
_ARGS, _KWARGS = operator.itemgetter(ARGS), operator.itemgetter(KWARGS)

SHARE_AT_BYTES = 1 << 20
"""Arguments of at least this many bytes are put into the object store once per run."""

IDLE_KEEP = 2
"""Puts that no call in flight holds, kept for later rows. An object shared by every row is
idle only between its calls (one actor, or one call in flight), so it stays; a stream of new
large objects each used once holds no more than this many beyond the calls in flight."""


def is_large(value: object) -> bool:
    """Whether ``value`` is worth one put shared by every call (O(1), no pickling)."""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return len(value) >= SHARE_AT_BYTES  # type: ignore[arg-type]
    if getattr(kind, "nbytes", None) is None:
        return False
    try:
        size = value.nbytes  # type: ignore[attr-defined]
    except Exception:
        return False
    return isinstance(size, int) and size >= SHARE_AT_BYTES


class Wire:
    """The large arguments of one run: object -> (put, calls in flight holding it)."""

    def __init__(self) -> None:
        self._puts: dict[int, tuple[object, ray.ObjectRef[Any], int]] = {}
        self._idle: dict[int, None] = {}  # puts no call holds, oldest first

    def send(self, batch: list[Item]) -> list[Item]:
        """``batch`` as it goes to an actor: large arguments replaced by references."""
        if not any(map(_KWARGS, batch)) and \
                _SMALL.issuperset(map(type, chain.from_iterable(map(_ARGS, batch)))):
            self.trim()  # positional scalars only (checked in C): nothing to share
            return batch
        out: list[Item] | None = None
        for position, item in enumerate(batch):
            args, kwargs = item[ARGS], item[KWARGS]
            if any(is_large(a) for a in args):
                args = tuple(self._pin(a) if is_large(a) else a for a in args)
            if kwargs and any(is_large(v) for v in kwargs.values()):
                kwargs = {k: self._pin(v) if is_large(v) else v for k, v in kwargs.items()}
            if args is not item[ARGS] or kwargs is not item[KWARGS]:
                if out is None:
                    out = list(batch)
                out[position] = (item[ROW], args, kwargs)
        self.trim()  # after the batch took back what it shares
        return batch if out is None else out

    def trim(self) -> None:
        """Drop the oldest idle puts beyond :data:`IDLE_KEEP`."""
        while len(self._idle) > IDLE_KEEP:
            oldest = next(iter(self._idle))
            del self._idle[oldest], self._puts[oldest]

    def _pin(self, value: object) -> ray.ObjectRef[Any]:
        key = id(value)
        held = self._puts.get(key)
        if held is None:
            ref = ray.put(value)
            self._puts[key] = (value, ref, 1)
            return ref
        self._idle.pop(key, None)
        self._puts[key] = (value, held[1], held[2] + 1)
        return held[1]

    def done(self, batch: Iterable[Item]) -> None:
        """The calls of ``batch`` ended: puts no call in flight holds become idle."""
        if not self._puts:
            return
        for item in batch:
            for value in (*item[ARGS], *(item[KWARGS] or {}).values()):
                key = id(value)
                held = self._puts.get(key)
                if held is not None and held[0] is value and held[2] > 0:
                    self._puts[key] = (value, held[1], held[2] - 1)
                    if held[2] == 1:
                        self._idle[key] = None

    @property
    def held(self) -> int:
        """How many objects this run holds in the object store now."""
        return len(self._puts)

    def close(self) -> None:
        """Drop every put (the run ended)."""
        self._puts.clear()
        self._idle.clear()


class _Packer(CloudPickler):
    """Pickles a batch in one pass; each reference in it becomes its place in ``refs``,
    which travel beside the payload as Ray's own (so Ray counts them as borrowed by the
    actor and keeps their objects alive). It is the pickler of Ray's own copy of
    cloudpickle, whose dispatch table holds the types given to
    ``ray.util.register_serializer``: they travel the way their owner chose, as they do
    through Ray."""

    def __init__(self, file: io.BytesIO, refs: list[ray.ObjectRef[Any]]) -> None:
        super().__init__(file, protocol=5)
        self.refs = refs

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, ray.ObjectRef):
            self.refs.append(obj)
            return _ref_at, (len(self.refs) - 1,)
        return super().reducer_override(obj)


def pack_batch(batch: list[Item]) -> tuple[bytes, list[ray.ObjectRef[Any]]] | None:
    """``batch`` as one ``bytes`` object and the references in it, so Ray serialises one
    object per call, not one per row (it walks a list of rows object by object); None
    when the batch cannot be pickled here (Ray's own path then says why)."""
    buffer = io.BytesIO()
    refs: list[ray.ObjectRef[Any]] = []
    try:
        _Packer(buffer, refs).dump(batch)
    except Exception:
        return None
    return buffer.getvalue(), refs

