"""Starting Ray when it is not running, and stopping it only if we started it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

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
