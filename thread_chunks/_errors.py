"""Exceptions and warnings raised by thread-chunks."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeAlias, TypeVar

T = TypeVar("T")


class ThreadChunksError(Exception):
    """Base class of the errors thread-chunks raises itself."""


class CheckpointError(ThreadChunksError):
    """A checkpoint file cannot be used: it is not ours, it is damaged, or it cannot be written."""


class CheckpointInUseError(CheckpointError):
    """Another run writes this checkpoint now (one writer at a time): raised when a run opens
    it, before any call runs, or when a reader cannot read it while that run holds it (on a
    network filesystem). ``host``, ``pid``, ``since`` (epoch seconds), ``renewed`` (its
    lease's last renewal) and ``rows_done`` (then) describe that run, where its lock says."""

    def __init__(self, message: str, *, path: str = "", host: str | None = None,
                 pid: int | None = None, since: float | None = None,
                 renewed: float | None = None, rows_done: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.host = host
        self.pid = pid
        self.since = since
        self.renewed = renewed
        self.rows_done = rows_done


class WorkerDiedError(ThreadChunksError):
    """A row killed the worker process running it too many times (segfault, ``os._exit``, OOM)."""

    def __init__(self, message: str, *, index: int | None = None, deaths: int = 0) -> None:
        super().__init__(message)
        self.index = index
        self.deaths = deaths

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_worker_died, (str(self), self.index, self.deaths))


def _rebuild_worker_died(message: str, index: int | None, deaths: int) -> WorkerDiedError:
    return WorkerDiedError(message, index=index, deaths=deaths)


class ResultError(ThreadChunksError, TypeError):
    """A call's result could not travel back to the driver: it cannot be pickled (a lock, a
    generator, an open file) or cannot be unpickled where the results are read. Only that
    row fails."""


class ActorPlacementError(ThreadChunksError):
    """No actor could run for ``placement_timeout`` seconds: Ray could not place any (the
    resources they ask for are held elsewhere, or the nodes that had them are gone)."""


class CheckpointFailedWarning(UserWarning):
    """Saving to the checkpoint failed mid-run; the computation goes on without saving."""


class CheckpointRestartWarning(UserWarning):
    """Nothing of an existing checkpoint is reused by this run: it holds results only of
    other identities (another function, another version of this one: the message says what
    changed, or that the function cannot be identified). They are kept in the file
    (``thread-chunks prune`` removes them); every call of this run is done afresh."""


class ConcurrencyReducedWarning(UserWarning):
    """Fewer calls run at once than ``chunk_size``: workers were killed for lack of memory,
    fewer actors fit the cluster, or Ray has not placed some actors (a lost node, resources
    held elsewhere) — those are used as soon as Ray places them."""


_INSIDE = (os.path.dirname(os.path.abspath(__file__)) + os.sep,
           os.path.abspath(contextlib.__file__))
"""Frames in these files are the library's own (and the context managers it enters): a
warning points past them."""


Held: TypeAlias = "list[tuple[str, type[Warning]]]"
"""Warnings held back (message, category), to be given where the user's frames are."""

_holding = threading.local()


def holding_warnings(held: Held, func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` with the warnings it gives through :func:`warn_user` put in ``held``
    instead: for work done in a thread of the library's own (no user frame to point at), whose
    warnings are given afterwards from the thread that waited for it."""
    _holding.held = held
    try:
        return func(*args)
    finally:
        _holding.held = None


def warn_user(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` pointing at the user's line: the first frame, walking out from the
    caller, outside thread-chunks (what ``skip_file_prefixes`` does on Python 3.12, for every
    version we support). In :func:`holding_warnings`, held instead. With no such frame, it
    points at the caller."""
    held: Held | None = getattr(_holding, "held", None)
    if held is not None:
        held.append((message, category))
        return
    frame: FrameType | None = sys._getframe(1)
    level = 2  # warnings.warn's stacklevel of the frame looked at
    while frame is not None and frame.f_code.co_filename.startswith(_INSIDE):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=2 if frame is None else level)
