"""How many rows go into one actor call, and whether a second call waits on an actor."""

from __future__ import annotations

from .._actor import Replied

_TARGET_BATCH_SECONDS = 0.05
"""Automatic batching aims for actor calls of about this long, or longer for a large pool
(:data:`_DRIVER_CALLS_PER_SECOND`)."""
_DRIVER_CALLS_PER_SECOND = 250
"""Calls a second one driver is kept to: half of what it sustains here (about 2 ms of
driver CPU a call; docs/benchmarks.md), so a pool of ``n`` actors aims for calls of at
least ``n / 250`` seconds (0.4 s for 100 actors) and the driver never sets the pace."""
_TARGET_BATCH_BYTES = 4 << 20
"""... and for replies of at most about this many bytes of results (one larger result is
one row a call)."""
_MAX_BATCH = 1024
"""The most rows automatic batching puts into one call."""
PIPELINE_BELOW_SECONDS = 0.1
"""Calls shorter than this get a second call queued on their actor, hiding the round trip
(about a millisecond: 1 % of such a call at most). Longer calls are not queued: a crash of the
driver then loses at most ``chunk_size`` calls (a queued call may still start on its actor
before Ray stops it), and a retry or timeout never waits behind a queued call."""


class Batcher:
    """How many rows go into one actor call, and whether to queue a second call per actor.

    Fixed when the user says so; otherwise starts at 1 and grows (doubling) while a call's
    rows take much less than :meth:`target` seconds and its results weigh much less than
    ``_TARGET_BATCH_BYTES``, so tiny calls stop paying Ray's per-call overhead one by one,
    and shrinks at once when rows get slower or their results bigger.

    It also keeps ``row_bytes``, the size of a result as recently seen (the larger of the
    last batch's mean and half the previous estimate): what a call in flight is expected to
    bring back.
    """

    def __init__(self, fixed: int | None, timeout: float | None) -> None:
        self.fixed = 1 if timeout is not None and fixed is None else fixed
        self.size = self.fixed or 1
        self.pipelined = False
        self.row_bytes = 0

    @staticmethod
    def target(actors: int) -> float:
        """The seconds of work one call aims for on a pool of ``actors``: ~50 ms, more for a
        pool whose replies at that length would come faster than one driver handles."""
        return max(_TARGET_BATCH_SECONDS, actors / _DRIVER_CALLS_PER_SECOND)

    def observe(self, reply: Replied, actors: int) -> None:
        rows = len(reply.outcomes)
        if not rows:
            return
        took = reply.took
        if took < PIPELINE_BELOW_SECONDS and (
                self.fixed is not None or self.target(actors) < PIPELINE_BELOW_SECONDS):
            self.pipelined = True  # (not for a pool whose batches grow to longer calls)
        self.row_bytes = max(reply.size // rows, self.row_bytes // 2)
        if self.fixed is None:
            per_row = max(took / rows, 1e-7)
            ideal = min(_MAX_BATCH, int(self.target(actors) / per_row),
                        _TARGET_BATCH_BYTES // max(self.row_bytes, 1))
            self.size = max(1, min(ideal, self.size * 2))

    def reset(self) -> None:
        if self.fixed is None:
            self.size = 1
