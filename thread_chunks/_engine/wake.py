"""How a run's driver is woken when something happened: in a thread, or on an event loop."""

from __future__ import annotations

import asyncio
import threading


class Wake:
    """How a run's driver is woken when something happened (set from any thread)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout: float | None) -> None:
        self._event.wait(timeout)


class AsyncWake(Wake):
    """The same for a driver on an asyncio event loop (the loop keeps running meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._async = asyncio.Event()

    def set(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._async.set)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def clear(self) -> None:
        self._async.clear()

    async def wait_async(self, timeout: float | None) -> None:
        """Until set or ``timeout``; a cancel always propagates. (Not ``asyncio.wait_for``:
        before Python 3.12 it swallows a cancel that lands in the loop turn the event is set
        in, and returns as if woken, so a cancelled sweep would go on running.)"""
        waiter = asyncio.ensure_future(self._async.wait())
        try:
            await asyncio.wait((waiter,), timeout=timeout)
        finally:
            waiter.cancel()
