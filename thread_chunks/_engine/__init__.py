"""The scheduling engine: a core without Ray (events in, commands out: :mod:`.vocabulary`,
:mod:`.core`), its Ray adapter (:mod:`.ray_adapter`) and the one driver loop (:mod:`.drive`)."""

from .batching import Batcher
from .ray_adapter import Pool, remote_actor_class
from .run import DEFAULT_MAX_BUFFERED_BYTES, Policy, Run, RunStats, Store
from .wake import AsyncWake, Wake

__all__ = ["DEFAULT_MAX_BUFFERED_BYTES", "AsyncWake", "Batcher", "Policy", "Pool", "Run",
           "RunStats", "Store", "Wake", "remote_actor_class"]
