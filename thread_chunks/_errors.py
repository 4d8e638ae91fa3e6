"""Exceptions and warnings raised by thread-chunks."""

from __future__ import annotations


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
    """An existing checkpoint did not match this run (function, body or parameters) and was
    replaced: every call is done afresh."""


class ConcurrencyReducedWarning(UserWarning):
    """Fewer calls run at once than ``chunk_size``: workers were killed for lack of memory,
    fewer actors fit the cluster, or Ray has not placed some actors (a lost node, resources
    held elsewhere) — those are used as soon as Ray places them."""
