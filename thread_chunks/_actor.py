"""The actor that holds the user's function and runs calls on it."""

from __future__ import annotations

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

    def run(self, label: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
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
        """Run several rows one after the other and report each one's outcome and timing."""
        outcomes: list[Outcome] = []
        for index, args, kwargs in items:
            start = time.time()
            try:
                _, value = self.run(index, *args, **kwargs)
            except Exception as exc:  # the user's error travels back as a value
                outcomes.append(Outcome(index, False, _portable(exc), start, time.time(),
                                        traceback.format_exc()))
            else:
                outcomes.append(Outcome(index, True, value, start, time.time(), ""))
        return outcomes

    def _tc_identity(self) -> tuple[str, int]:
        """The Ray node id and process id of this worker."""
        return ray.get_runtime_context().get_node_id(), os.getpid()


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
