"""The one driver loop: a run's outcomes handed out as they come, waiting in between, in a
thread (:func:`run`) or on an asyncio event loop (:func:`arun`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator

from .._actor import Outcome
from .ray_adapter import Adapter, Pool
from .run import Run
from .wake import AsyncWake


class Wait:
    """A step of the loop: wait until the run's wake is set, or ``timeout`` seconds
    (None: no limit)."""

    __slots__ = ("timeout",)

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout


def steps(pool: Pool, state: Run) -> Generator[Wait | list[Outcome], None, None]:
    """The loop both drivers run: a part of outcomes to hand out (a non-empty list), or a
    :class:`Wait`; over when the run is done. A part counts as handed out once the next step
    is asked for. Closing it early stops this run's calls (and no other run's)."""
    adapter = Adapter.of(pool)
    adapter.open(state)
    try:
        while (out := adapter.turn(state)) is not None:
            if not out:
                yield Wait(adapter.time_left())
                continue
            yield out
            adapter.handed(state, len(out))
    finally:
        adapter.close(state)


def run(pool: Pool, state: Run) -> Generator[list[Outcome], None, None]:
    """Run every item of ``state.source`` on ``pool``'s actors, sharing them with the other
    runs open on the pool: at most ``pool.size`` calls running at once in all.

    Waits on the run's wake-up (never polls). Calls go only to actors that have started, so
    an actor Ray cannot place holds no rows. Yields the outcomes, one per item, a part (a
    non-empty list) at a time as they can be handed out: in input order when ``ordered``
    (holding back only what arrived early), else as they finish. Items are pulled from
    ``source`` only when an actor can take them (and one when every row read so far was handed
    out, to see whether the input is over), and never more than ``state.bound()``
    (``policy.max_buffered``) ahead of the outcomes handed out; a part counts as handed out
    once the next one is asked for, so the bound holds while the user holds a result (it
    lags, never leads). Closing the generator early stops this run's calls (and no other
    run's).
    """
    loop = steps(pool, state)
    try:
        for step in loop:
            if isinstance(step, Wait):
                state.wake.wait(step.timeout)
            else:
                yield step
    finally:
        loop.close()


async def arun(pool: Pool, state: Run) -> AsyncGenerator[list[Outcome], None]:
    """:func:`run` for asyncio: the same loop, waiting on the event loop instead of in a
    thread, so the loop keeps running other tasks. Cancelling the task that iterates (or
    closing the generator) stops this run's calls, as closing :func:`run` does."""
    wake = AsyncWake()
    state.wake = wake
    loop = steps(pool, state)
    try:
        for step in loop:
            if isinstance(step, Wait):
                await wake.wait_async(step.timeout)
            else:
                yield step
    finally:
        loop.close()
