"""Run a function over many argument lists on Ray actors, never more than ``chunk_size`` calls
at once, with results in order, a progress bar and crash-safe checkpoints."""

from . import config
from ._actor import LabelledActor, RemoteLabelledActor
from ._checkpoint import Checkpoint, NotStored, StoredIdentity, identities, prune
from ._chunker import Chunker, chunk
from ._decorator import Chunked, chunked
from ._engine import RunStats
from ._errors import (
    ActorPlacementError,
    CheckpointError,
    CheckpointFailedWarning,
    CheckpointInUseError,
    CheckpointRestartWarning,
    ConcurrencyReducedWarning,
    ResultError,
    ThreadChunksError,
    WorkerDiedError,
)
from ._options import Options, RunOptions
from ._rows import TypedRow

__all__ = [
    "ActorPlacementError",
    "CheckpointError",
    "Checkpoint",
    "CheckpointFailedWarning",
    "CheckpointInUseError",
    "CheckpointRestartWarning",
    "Chunked",
    "Chunker",
    "ConcurrencyReducedWarning",
    "LabelledActor",
    "NotStored",
    "Options",
    "RemoteLabelledActor",
    "ResultError",
    "RunOptions",
    "RunStats",
    "StoredIdentity",
    "ThreadChunksError",
    "TypedRow",
    "WorkerDiedError",
    "chunk",
    "chunked",
    "config",
    "identities",
    "prune",
]
