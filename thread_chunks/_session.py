"""Starting Ray when it is not running, and stopping it only if we started it."""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import ray

from . import config

log = logging.getLogger("thread_chunks")


def ensure_ray() -> bool:
    """Start Ray unless it is running; True when this call started it (and so owns it).

    A Ray the user started is used as it is. ``RAY_ADDRESS`` in the environment means a cluster
    the user chose: we connect to it without ``config.ray_config`` (Ray refuses resource
    options when connecting to an existing cluster) and never disconnect or shut it down.
    Otherwise (``RAY_ADDRESS`` unset or ``local``) a new local Ray is started, even when another
    program's Ray runs on this machine: Ray alone would attach to the newest one.
    """
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS", "")
    if address and address != "local":
        log.info("connecting to the Ray cluster at RAY_ADDRESS=%s", address)
        ray.init()
        return False
    log.info("starting Ray with %s", config.ray_config)
    ray.init(**{"address": "local", **config.ray_config})  # never a stray local cluster
    return True


@contextmanager
def ray_session() -> Iterator[bool]:
    """Ray is running inside; shut down afterwards only if this context started it."""
    started = ensure_ray()
    try:
        yield started
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


class Watcher(Protocol):
    """What hears that Ray is being shut down (see :func:`watch_shutdown`)."""

    def ray_stopping(self) -> None:
        """Ray's shutdown began: touch Ray no more (called from the watching thread)."""

    def ray_stopped(self) -> None:
        """Ray's shutdown is over (called from the watching thread)."""


_watchers: weakref.WeakSet[Watcher] = weakref.WeakSet()
_watchers_lock = threading.Lock()
_watching: threading.Thread | None = None


def watch_shutdown(watcher: Watcher) -> bool:
    """Tell ``watcher`` when the Ray session running now is shut down (``ray.shutdown()``
    from any thread, or at exit); held weakly. True when it will be told as it happens;
    False when this Ray gives no such signal (a Ray Client connection, a Ray whose internals
    differ): then the caller has to look with ``ray.is_initialized()`` itself.

    Ray has no public shutdown hook, and the references pending then never resolve (their
    futures stay pending). What it has: ``ray.shutdown()`` holds its connect-or-shutdown lock
    throughout, and, while disconnecting the driver, sets its worker's ``threads_stopped``
    event to stop its own listener threads. One daemon thread of ours waits on that event
    too, so nothing polls: once it is set, every watcher registered until then is told the
    shutdown began, and, once the lock is free again (the shutdown is over), that it ended.
    """
    global _watching
    ray_worker = sys.modules.get("ray._private.worker")  # (imported by ray itself)
    worker = getattr(ray_worker, "global_worker", None)
    stopped = getattr(worker, "threads_stopped", None)
    lock = getattr(ray_worker, "_connect_or_shutdown_lock", None)
    if not isinstance(stopped, threading.Event) or lock is None or \
            not getattr(worker, "connected", False):
        return False
    with _watchers_lock:
        _watchers.add(watcher)
        if _watching is None:
            _watching = threading.Thread(target=_watch, args=(stopped, lock), daemon=True,
                                         name="thread-chunks-ray-shutdown")
            _watching.start()
    return True


def _watch(stopped: threading.Event, lock: threading.RLock) -> None:
    while True:
        stopped.wait()
        _tell(lock)


def _tell(lock: threading.RLock) -> None:
    """One shutdown: tell the watchers of the session ending (not held past it)."""
    with _watchers_lock:  # a new session's watchers register only after this one ended
        ending = list(_watchers)
        _watchers.clear()
    for watcher in ending:
        watcher.ray_stopping()
    with lock:  # ray.shutdown() holds it until it is over (its event is clear again then)
        pass
    for watcher in ending:
        watcher.ray_stopped()
