"""Functions for tests/test_bad_input.py: importable by the workers (Ray pickles them by
reference)."""

from __future__ import annotations

import asyncio
import sys


class UserStop(BaseException):
    """A BaseException of the user's own, not an Exception."""


def stop_on(x: int, kind: str, bad: int = 3) -> int:
    """``x * 10``, except row ``bad``, which raises a BaseException that is not an
    Exception, of the ``kind`` asked for."""
    if x == bad:
        if kind == "cancelled":
            raise asyncio.CancelledError(f"cancelled at {x}")
        if kind == "interrupt":
            raise KeyboardInterrupt(f"interrupted at {x}")
        if kind == "exit":
            sys.exit(f"exit at {x}")
        raise UserStop(f"stopped at {x}")
    return x * 10


def exit_actor_on(x: int, bad: int = 1) -> int:
    """``x``, except row ``bad``, which ends its actor the way Ray means it."""
    if x == bad:
        from ray.actor import exit_actor  # type: ignore[attr-defined]  # (not in __all__)

        exit_actor()
    return x
