"""The scheduling engine: a core without Ray (events in, commands out), its Ray adapter and
the one driver loop (see :mod:`.vocabulary`)."""

from .batching import Batcher
from .run import DEFAULT_MAX_BUFFERED_BYTES, Policy, Run, RunStats, Store
from .wake import AsyncWake, Wake

__all__ = ["DEFAULT_MAX_BUFFERED_BYTES", "AsyncWake", "Batcher", "Policy", "Run", "RunStats",
           "Store", "Wake"]
