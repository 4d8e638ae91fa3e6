"""Exceptions and warnings raised by thread-chunks."""

from __future__ import annotations


class ThreadChunksError(Exception):
    """Base class of the errors thread-chunks raises itself."""


class CheckpointError(ThreadChunksError):
    """A checkpoint file cannot be used: it is not ours, it is damaged, or it cannot be written."""


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
