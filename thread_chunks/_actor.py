"""The actor that holds the user's function and runs calls on it."""

from __future__ import annotations

import inspect
import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import cloudpickle
import ray

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
    """The result, or the exception when not ``ok``."""
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

    def _tc_run_batch(self, items: Sequence[Item]) -> list[Outcome]:
        """Run several rows one after the other and report each one's outcome and timing.

        An ``ObjectRef`` that is a whole argument (positional or keyword) is replaced by its
        value, as Ray does for task arguments; refs nested inside other values stay refs.
        """
        values = _resolve(items)
        outcomes: list[Outcome] = []
        call = self._tc_call()
        for index, args, kwargs in items:
            start = time.time()
            try:
                if values:
                    args, kwargs = _substitute(args, kwargs, values)
                value = call(index, args, kwargs)
            except Exception as exc:  # the user's error travels back as a value
                outcomes.append(Outcome(index, False, _portable(exc), start, time.time(),
                                        traceback.format_exc()))
            else:
                outcomes.append(Outcome(index, True, value, start, time.time(), ""))
        return outcomes

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


def _portable(exc: BaseException) -> BaseException:
    """``exc`` itself when it survives pickling, else a RuntimeError that describes it."""
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc} "
                            "(the original exception could not be pickled)")
    return exc


RemoteLabelledActor = ray.remote(LabelledActor)
"""``ray.remote(LabelledActor)``: the actor class thread-chunks creates by default."""
