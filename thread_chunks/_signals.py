"""SIGTERM (what Slurm, Kubernetes and ``kill`` send before they kill) ends a checkpointed run
as Ctrl-C does: ``KeyboardInterrupt`` in the driver, so the run stops its calls, its
checkpoint is closed consistent, its lock is let go, and the next run resumes.

The handler is installed only where that is safe: from the main thread (Python runs signal
handlers there), and only over the default action or Ray's own driver handler (``ray.init``
installs one that calls ``sys.exit``); a handler the user installed is left alone. It is put
back as it was when the last run open in this process ends. Outside a run it does what the
handler it replaced did.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

_open = 0
_previous: Any = None
_guard = threading.Lock()


def _replaceable(handler: Any) -> bool:
    """The default action, or the handler ``ray.init`` installs in a driver."""
    return handler in (signal.SIG_DFL, None) or getattr(handler, "__module__", "") == (
        "ray._private.worker")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if _open:
        raise KeyboardInterrupt(f"signal {signum} (SIGTERM): the run stops, its checkpoint "
                                "is kept")
    previous = _previous
    if callable(previous):  # no run open: what was there before
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def run_started() -> bool:
    """A checkpointed run starts: SIGTERM becomes KeyboardInterrupt where that is safe.
    True when this run counts (call :func:`run_ended` when it ends)."""
    global _open, _previous
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        return False
    with _guard:
        current = signal.getsignal(signal.SIGTERM)
        if current is not _on_sigterm:
            if not _replaceable(current):
                return False  # the user's own handler
            _previous = current
            signal.signal(signal.SIGTERM, _on_sigterm)
        _open += 1
    return True


def run_ended() -> None:
    """A run counted by :func:`run_started` ended: the handler before goes back once none is
    open (from the main thread; from another, ours stays and acts as the one before)."""
    global _open
    with _guard:
        _open = max(0, _open - 1)
        if (_open == 0 and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) is _on_sigterm):
            signal.signal(signal.SIGTERM, _previous if _previous is not None else
                          signal.SIG_DFL)
