"""The actor that holds the user's function and runs calls on it."""

from __future__ import annotations

import inspect
import os
import pickle
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeAlias

import cloudpickle
import ray

from ._errors import ResultError
from ._types import Args, Kwargs


class Item(NamedTuple):
    """One row as sent to an actor: its number (``row``), positional and keyword arguments."""

    row: int
    args: Args
    kwargs: Kwargs


class Outcome(NamedTuple):
    """One row's outcome, as an actor reports it and the checkpoint records it."""

    row: int
    ok: bool
    value: Any
    """When ``ok``, the result *pickled* on the actor (a :data:`Payload`: its size is known,
    and it is unpickled only when handed out, by :func:`unpack`); otherwise the exception."""
    started: float
    ended: float
    """Epoch seconds."""
    traceback: str
    """The remote traceback (empty on success)."""


class LabelledActor:
    """Holds a function so it is copied to a worker once, not with every call.

    ``run(label, *args)`` returns ``(label, func(*args))`` so results can be put back in order.
    Subclass it to give the worker state of its own (open a dataset once, warm a cache); the
    subclass, plain or decorated with ``ray.remote``, is accepted wherever actors are
    (``actor_cls=``, ``Chunker(actors=...)``, ``chunk(..., actors=...)``). A subclass that
    overrides :meth:`run` is honoured: every call goes through it.

    Example::

        class Warm(LabelledActor):
            def __init__(self, func):
                super().__init__(func)
                self.table = load_table()  # once per worker
    """

    def __init__(self, func: Callable[..., Any] | None) -> None:
        self._func = func

    def run(self, label: Any, /, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Call the stored function and return ``(label, result)``."""
        if self._func is None:
            raise RuntimeError("this actor holds no function yet: call set_func first")
        return label, self._func(*args, **kwargs)

    def set_func(self, func: Callable[..., Any]) -> None:
        """Replace the stored function."""
        self._func = func

    def get_func(self) -> Callable[..., Any] | None:
        """Return the stored function."""
        return self._func

    # -- used by thread-chunks' scheduler; not part of the 1.0.5 surface --------------------

    def _tc_run_batch(self, items: Sequence[Item]) -> Reply:
        """Run several rows one after the other; their outcomes as one reply (read by
        :func:`read_reply`).

        Each result is pickled here, on its own: a result that cannot be pickled fails only
        its row (a :class:`ResultError` naming it), and the driver learns every result's size
        (batches and the ordered buffer are bounded in bytes). The reply is one ``bytes``
        object, so Ray serialises one object per batch, not one per row, plus the large
        buffers of the results (numpy arrays' data) out of band: Ray writes them into its
        object store once, and the driver reads them from there without a copy.

        An ``ObjectRef`` that is a whole argument (positional or keyword) is replaced by its
        value, as Ray does for task arguments; refs nested inside other values stay refs.
        """
        values = _resolve(items)
        outcomes: list[tuple[int, bool, Any, float, float, str]] = []
        buffers: list[pickle.PickleBuffer] = []
        call = self._tc_call()
        for index, args, kwargs in items:
            start = time.time()
            try:
                if values:
                    args, kwargs = _substitute(args, kwargs, values)
                value = call(index, args, kwargs)
            except Exception as exc:  # the user's error travels back as a value
                outcomes.append((index, False, _pack_error(exc), start, time.time(),
                                 traceback.format_exc()))
                continue
            ended = time.time()
            try:
                payload = _pack_out_of_band(value, buffers)
            except Exception as exc:
                error = ResultError(
                    f"row {index} of {function_name(self._func)} returned a "
                    f"{_type_name(value)}, which cannot be pickled to travel back: "
                    f"{type(exc).__name__}: {exc}")
                outcomes.append((index, False, _pack_error(error), start, ended, ""))
            else:
                outcomes.append((index, True, payload, start, ended, ""))
            del value
        listed = pickle.dumps(outcomes, protocol=5)
        return (listed, buffers) if buffers else listed

    def _tc_call(self) -> Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]:
        """How one row is run: through ``run`` when a subclass overrides it (the 1.0.5 hook),
        else the stored function directly. Ray wraps actor methods in a wrapper whose own
        parameters (``self``, ``_ray_trace_ctx``) would swallow keyword arguments of the
        same name, so the default path must not go through ``run``."""
        func = self._func
        if func is None or inspect.unwrap(type(self).run) is not _DEFAULT_RUN:
            return lambda label, args, kwargs: self.run(label, *args, **kwargs)[1]
        return lambda _label, args, kwargs: func(*args, **kwargs)

    def _tc_identity(self) -> tuple[str, int]:
        """The Ray node id and process id of this worker."""
        return ray.get_runtime_context().get_node_id(), os.getpid()


_DEFAULT_RUN = LabelledActor.run
"""``LabelledActor.run`` as defined here, before Ray wraps the methods of an actor class."""


def _resolve(items: Sequence[Item]) -> dict[ray.ObjectRef[Any], Any]:
    """The values of the refs that are whole arguments of ``items``, fetched together.

    A ref that cannot be fetched maps to the exception, so only its rows fail.
    """
    refs = {a for item in items for a in (*item.args, *item.kwargs.values())
            if isinstance(a, ray.ObjectRef)}
    if not refs:
        return {}
    unique = list(refs)
    try:
        return dict(zip(unique, ray.get(unique), strict=True))
    except Exception:
        values: dict[ray.ObjectRef[Any], Any] = {}
        for ref in unique:
            try:
                values[ref] = ray.get(ref)
            except Exception as exc:
                values[ref] = _Unresolved(exc)
        return values


class _Unresolved:
    def __init__(self, error: Exception) -> None:
        self.error = error


def _substitute(args: tuple[Any, ...], kwargs: dict[str, Any],
                values: dict[ray.ObjectRef[Any], Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    def value(a: Any) -> Any:
        if not isinstance(a, ray.ObjectRef):
            return a
        got = values[a]
        if isinstance(got, _Unresolved):
            raise got.error
        return got

    return tuple(value(a) for a in args), {k: value(v) for k, v in kwargs.items()}


def function_name(func: object) -> str:
    """The name shown in messages and recorded in checkpoints."""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return str(name) if name else type(func).__name__


def _type_name(value: object) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"


Payload: TypeAlias = "bytes | Packed"
"""A pickled result: ``bytes``, or a :class:`Packed` pickle whose large buffers stayed out of
band."""
Reply: TypeAlias = "bytes | tuple[bytes, list[Any]]"
"""What one call of ``_tc_run_batch`` returns: its outcomes pickled, and the out-of-band
buffers of their results, when there are any."""
OUT_OF_BAND_BYTES = 64 << 10
"""Buffers of a result (a numpy array's data) of at least this size travel out of band."""


class Packed(NamedTuple):
    """A result pickled with its large buffers out of band: they arrive as zero-copy views
    of Ray's object store (which holds them until the result is handed out and dropped)."""

    header: bytes
    buffers: tuple[Any, ...]
    nbytes: int


def weight(payload: Payload) -> int:
    """The bytes a pickled result takes."""
    return payload.nbytes if isinstance(payload, Packed) else len(payload)


def in_band(payload: Payload) -> bytes:
    """A pickled result as one standalone pickle (what a checkpoint stores)."""
    return pack(unpack(payload)) if isinstance(payload, Packed) else payload


def _pack_out_of_band(value: object, buffers: list[pickle.PickleBuffer]
                      ) -> bytes | tuple[bytes, int, int]:
    """``value`` pickled, its buffers of :data:`OUT_OF_BAND_BYTES` or more appended to
    ``buffers``: the pickle alone, or (pickle, first buffer, count)."""
    first = len(buffers)

    def aside(buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < OUT_OF_BAND_BYTES:
            return True  # in band
        buffers.append(buffer)
        return False

    try:
        header = pickle.dumps(value, protocol=5, buffer_callback=aside)
    except Exception:
        del buffers[first:]
        return pack(value)
    return header if len(buffers) == first else (header, first, len(buffers) - first)


def pack(value: object) -> bytes:
    """``value`` pickled: the standard pickler (fast, C) first; cloudpickle for what it cannot
    do (lambdas, local classes). What neither can pickle raises."""
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        return cloudpickle.dumps(value, protocol=5)


def unpack(payload: Payload) -> Any:
    """A value :func:`pack` pickled, or a :class:`Packed` result (its arrays are then
    read-only views of Ray's object store, as Ray's own results are)."""
    if isinstance(payload, Packed):
        return pickle.loads(payload.header, buffers=payload.buffers)
    return pickle.loads(payload)


def _pack_error(exc: BaseException) -> bytes:
    """``exc`` pickled when it survives the round trip, else a RuntimeError describing it."""
    try:
        payload = pack(exc)
        unpack(payload)
    except Exception:
        return pack(RuntimeError(f"{_type_name(exc)}: {exc} (the original exception could "
                                 "not be pickled)"))
    return payload


def read_reply(reply: Reply) -> list[Outcome]:
    """The outcomes of one :meth:`LabelledActor._tc_run_batch` reply: successes keep their
    pickled result (unpickled when handed out), failures carry their exception."""
    listed, buffers = (reply, []) if isinstance(reply, bytes) else reply
    outcomes = [Outcome._make(fields) for fields in pickle.loads(listed)]
    for position, outcome in enumerate(outcomes):
        if outcome.ok:
            if type(outcome.value) is tuple:
                header, first, count = outcome.value
                views = tuple(buffers[first:first + count])
                size = len(header) + sum(memoryview(v).nbytes for v in views)
                outcomes[position] = outcome._replace(value=Packed(header, views, size))
        else:
            try:
                error = unpack(outcome.value)
            except Exception as exc:
                error = RuntimeError(f"the exception raised by row {outcome.row} could not "
                                     f"be unpickled here: {type(exc).__name__}: {exc}")
            outcomes[position] = outcome._replace(value=error)
    return outcomes


RemoteLabelledActor = ray.remote(LabelledActor)
"""``ray.remote(LabelledActor)``: the actor class thread-chunks creates by default."""
