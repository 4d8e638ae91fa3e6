"""Placement: which slots wait for Ray to place their actor and since when, the notices of a
long wait, and the placement timeout (no actor ready for that long fails the runs)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .._errors import ActorPlacementError, ConcurrencyReducedWarning, warn_user

if TYPE_CHECKING:
    from .run import Run

log = logging.getLogger("thread_chunks")

PLACEMENT_NOTICE_SECONDS = 10.0
"""An actor Ray has not placed after this long is reported: a ConcurrencyReducedWarning while
others run, a log line and a progress-bar note while none does."""


class Placement:
    """The wait for actors to be placed."""

    def __init__(self, now: float, describe_wait: Callable[[], str]) -> None:
        self.describe_wait = describe_wait
        self.waiting: dict[int, float] = {}
        """Slot -> when its actor was asked for, oldest first (the first is the earliest)."""
        self.stalled_since: float | None = now
        """No actor ready since then (None: some is)."""
        self.limit: float | None = None
        """The shortest ``placement_timeout`` of the open runs (None: all wait forever)."""
        self.warned_reduced = False
        """The wait was reported while other actors ran."""
        self.logged_waiting = False
        """The wait was reported while none ran."""

    def reopen(self, now: float, any_ready: bool) -> None:
        """The first run after a pause: the waits count from now."""
        self.warned_reduced = self.logged_waiting = False
        self.waiting = dict.fromkeys(self.waiting, now)
        self.stalled_since = None if any_ready else now

    def runs_changed(self, runs: Iterable[Run]) -> None:
        limits = [run.policy.placement_timeout for run in runs]
        given = [limit for limit in limits if limit is not None]
        self.limit = min(given) if given else None

    def notice_after(self) -> float:
        """Seconds an actor may wait for placement before it is reported: 10, or half of
        ``placement_timeout`` when that is shorter."""
        limit = self.limit
        return PLACEMENT_NOTICE_SECONDS if limit is None else min(
            PLACEMENT_NOTICE_SECONDS, limit / 2)

    def reported(self, active: int) -> bool:
        """Whether the wait was already reported in the current state (``active``: actors
        ready and in use)."""
        return self.warned_reduced if active else self.logged_waiting

    def deadline(self, active: int) -> float | None:
        """When the wait is to be reported or to fail the runs (None: neither)."""
        times: list[float] = []
        if self.waiting and not self.reported(active):
            times.append(next(iter(self.waiting.values())) + self.notice_after())
        if self.stalled_since is not None and self.limit is not None:
            times.append(self.stalled_since + self.limit)
        return min(times) if times else None

    def timed_out(self, now: float, runs: Iterable[Run], name: str) -> bool:
        """No actor was ready for ``placement_timeout``: the runs that set one that short
        fail (True)."""
        stalled, limit = self.stalled_since, self.limit
        if stalled is None or limit is None or now - stalled < limit:
            return False
        error = self.error(name, now - stalled, limit)
        for run in tuple(runs):
            if run.policy.placement_timeout is not None and \
                    now - stalled >= run.policy.placement_timeout:
                run.fail(error)
        return True

    def late(self, now: float) -> int:
        """How many actors have waited past the notice (the waits are oldest first)."""
        after, count = self.notice_after(), 0
        for since in self.waiting.values():
            if now - since < after:
                break
            count += 1
        return count

    def notice(self, late: int, active: int, size: int, name: str, runs: Iterable[Run]
               ) -> None:
        """Report ``late`` actors not placed: a warning while ``active`` others run, a log
        line and a progress-bar note while none does."""
        if active and not self.warned_reduced:
            self.warned_reduced = True
            warn_user(
                f"{late} of {size} actors for {name!r} could not be "
                f"placed by Ray for {self.notice_after():g} s ({self.describe_wait()}); "
                f"running {active} calls at once until Ray places them",
                ConcurrencyReducedWarning)
        elif not active and not self.logged_waiting:
            self.logged_waiting = True
            limit = self.limit
            log.warning("waiting for Ray to place actors for %r: none placed for %g s (%s); "
                        "%s", name, self.notice_after(), self.describe_wait(),
                        "waiting without limit (placement_timeout=None)" if limit is None
                        else f"giving up after placement_timeout={limit:g} s")
            for run in runs:
                run.progress.note("waiting for Ray to place actors")

    def placed(self, slot: int, active: int, name: str, runs: Iterable[Run]) -> None:
        """``slot``'s actor is ready (``active``: actors ready and in use, it included)."""
        if self.waiting.pop(slot, None) is not None and self.warned_reduced:
            log.info("an actor for %r was placed: %d calls at once", name, active)
        if self.logged_waiting:
            self.logged_waiting = False
            for run in runs:
                run.progress.note("")
        self.stalled_since = None

    def error(self, name: str, waited: float, limit: float) -> ActorPlacementError:
        return ActorPlacementError(
            f"no actor for {name!r} could run for {waited:.0f} s "
            f"(placement_timeout={limit:g}): {self.describe_wait()}. "
            "Free those resources, add a node that has them, ask for less in actor_options, "
            "or raise placement_timeout")
